//! Parquet output of delivery streams: JSON records put into a real store,
//! delivered to a directory, and the files read back with the `parquet`
//! crate's reader give each record's fields, types and nulls; records that
//! are not JSON objects or whose fields do not convert are named.
#![cfg(feature = "parquet")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use parquet::basic::{LogicalType, Repetition, TimeUnit, Type as PhysicalType};
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use weir_collector::firehose::parquet::{ConvertError, convert};
use weir_collector::firehose::{
    BufferingHints, ColumnType, Compression, DeliveryConfig, DeliveryStream, DirectoryDestination,
    FirehoseError, ParquetColumn, ParquetCompression, ParquetSchema, RecordFormat,
};
use weir_collector::store::{
    CreateStreamOptions, LogStore, ManualClock, NewRecord, StoreConfig, StreamStore,
};

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;
const STREAM: &str = "readings";

fn schema(compression: ParquetCompression) -> ParquetSchema {
    let mut id = ParquetColumn::new("id", ColumnType::Int64);
    id.nullable = false;
    let mut temp = ParquetColumn::new("temp", ColumnType::Double);
    temp.path = Some("/reading/temp".into());
    let mut device = ParquetColumn::new("device", ColumnType::String);
    device.path = Some("meta.device".into());
    ParquetSchema {
        columns: vec![
            id,
            device,
            temp,
            ParquetColumn::new("ok", ColumnType::Boolean),
            ParquetColumn::new("at", ColumnType::TimestampMillis),
        ],
        compression,
    }
}

async fn open_store(dir: &Path, clock: &ManualClock) -> LogStore {
    let config = StoreConfig {
        retention_check_interval: Duration::from_secs(24 * 3600),
        ..StoreConfig::default()
    };
    LogStore::open_with_clock(dir, config, Arc::new(clock.clone())).await.expect("open store")
}

async fn put(store: &LogStore, records: &[serde_json::Value]) {
    let batch = records
        .iter()
        .map(|r| NewRecord {
            partition_key: "k".into(),
            data: Bytes::from(r.to_string()),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        })
        .collect();
    for r in store.append(STREAM, batch).await.expect("append") {
        r.expect("record appended");
    }
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Each row of a Parquet file as (column, field) pairs.
fn rows(body: Vec<u8>) -> (SerializedFileReader<Bytes>, Vec<Vec<(String, Field)>>) {
    let reader = SerializedFileReader::new(Bytes::from(body)).expect("a Parquet file");
    let rows = reader
        .get_row_iter(None)
        .expect("rows")
        .map(|row| {
            let row = row.expect("row");
            row.get_column_iter().map(|(name, f)| (name.clone(), f.clone())).collect()
        })
        .collect();
    (reader, rows)
}

fn expected_row(
    id: i64,
    device: Option<&str>,
    temp: Option<f64>,
    ok: Option<bool>,
    at: Option<i64>,
) -> Vec<(String, Field)> {
    vec![
        ("id".into(), Field::Long(id)),
        ("device".into(), device.map_or(Field::Null, |d| Field::Str(d.into()))),
        ("temp".into(), temp.map_or(Field::Null, Field::Double)),
        ("ok".into(), ok.map_or(Field::Null, Field::Bool)),
        ("at".into(), at.map_or(Field::Null, Field::TimestampMillis)),
    ]
}

#[tokio::test]
async fn delivered_parquet_reads_back_with_fields_types_and_nulls() {
    for compression in
        [ParquetCompression::Snappy, ParquetCompression::Zstd, ParquetCompression::None]
    {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(T0);
        let store = open_store(&dir.path().join("store"), &clock).await;
        store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
        let out = dir.path().join("out");
        let config = DeliveryConfig {
            buffering: BufferingHints { size_mib: 1, interval_secs: 0 },
            format: RecordFormat::Parquet(schema(compression).into_format().expect("schema")),
            compression: Compression::None,
            prefix: "p/".into(),
            ..DeliveryConfig::new("to-parquet", STREAM)
        };
        assert_eq!(config.extension(), ".parquet");
        let (mut delivery, _) = DeliveryStream::open(
            store.clone(),
            DirectoryDestination::new(&out),
            config,
            dir.path().join("checkpoint.json"),
            Arc::new(clock.clone()),
        )
        .await
        .expect("open delivery stream");

        let records = [
            serde_json::json!({"id": 1, "meta": {"device": "d-1"}, "reading": {"temp": 21.5},
                "ok": true, "at": T0, "extra": [1, 2]}),
            // Missing and null fields of nullable columns are nulls.
            serde_json::json!({"id": 2, "meta": {"device": null}, "ok": false}),
            serde_json::json!({"id": -3, "reading": {"temp": -4}, "at": null}),
        ];
        put(&store, &records).await;
        let report = delivery.poll().await.expect("poll");
        assert_eq!(report.delivered.len(), 1, "{compression:?}");
        assert_eq!(report.delivered[0].records, 3);

        let mut paths = Vec::new();
        files(&out, &mut paths);
        assert_eq!(paths.len(), 1, "{paths:?}");
        let name = paths[0].to_string_lossy().into_owned();
        assert!(name.ends_with(".parquet"), "{name}");
        let (reader, got) = rows(std::fs::read(&paths[0]).expect("read object"));
        assert_eq!(reader.metadata().num_row_groups(), 1, "one row group per batch");
        let schema = reader.metadata().file_metadata().schema_descr_ptr();
        let columns: Vec<_> = schema
            .columns()
            .iter()
            .map(|c| {
                let t = c.self_type();
                (c.name().to_owned(), c.physical_type(), t.get_basic_info().repetition())
            })
            .collect();
        assert_eq!(
            columns,
            [
                ("id".into(), PhysicalType::INT64, Repetition::REQUIRED),
                ("device".into(), PhysicalType::BYTE_ARRAY, Repetition::OPTIONAL),
                ("temp".into(), PhysicalType::DOUBLE, Repetition::OPTIONAL),
                ("ok".into(), PhysicalType::BOOLEAN, Repetition::OPTIONAL),
                ("at".into(), PhysicalType::INT64, Repetition::OPTIONAL),
            ]
        );
        assert_eq!(schema.column(1).logical_type_ref(), Some(&LogicalType::String));
        assert!(matches!(
            schema.column(4).logical_type_ref(),
            Some(LogicalType::Timestamp(t)) if t.is_adjusted_to_u_t_c && t.unit == TimeUnit::MILLIS
        ));
        let at = i64::try_from(T0).expect("ms");
        assert_eq!(
            got,
            [
                expected_row(1, Some("d-1"), Some(21.5), Some(true), Some(at)),
                expected_row(2, None, None, Some(false), None),
                expected_row(-3, None, Some(-4.0), None, None),
            ],
            "{compression:?}"
        );
        store.close().await;
    }
}

#[tokio::test]
async fn records_that_do_not_convert_go_to_the_error_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = ManualClock::new(T0);
    let store = open_store(&dir.path().join("store"), &clock).await;
    store.create_stream(STREAM, CreateStreamOptions::default()).await.expect("create");
    let out = dir.path().join("out");
    let config = DeliveryConfig {
        buffering: BufferingHints { size_mib: 1, interval_secs: 0 },
        format: RecordFormat::Parquet(
            schema(ParquetCompression::Snappy).into_format().expect("schema"),
        ),
        compression: Compression::None,
        prefix: "p/".into(),
        ..DeliveryConfig::new("to-parquet", STREAM)
    };
    let (mut delivery, _) = DeliveryStream::open(
        store.clone(),
        DirectoryDestination::new(&out),
        config,
        dir.path().join("checkpoint.json"),
        Arc::new(clock.clone()),
    )
    .await
    .expect("open delivery stream");
    let records = [
        serde_json::json!({"id": 1, "ok": true}),
        serde_json::json!([1, 2, 3]),
        serde_json::json!({"id": "two"}),
        serde_json::json!({"id": 3, "ok": false}),
        serde_json::json!({"ok": true}),
    ];
    put(&store, &records).await;
    let report = delivery.poll().await.expect("poll: bad records never stall the stream");
    assert_eq!(report.delivered.iter().map(|d| d.records).sum::<usize>(), 2);
    assert_eq!(report.errors.iter().map(|e| e.records).sum::<usize>(), 3);

    let mut paths = Vec::new();
    files(&out, &mut paths);
    paths.sort();
    assert_eq!(paths.len(), 2, "{paths:?}");
    let (object, errors): (Vec<_>, Vec<_>) =
        paths.iter().partition(|p| p.to_string_lossy().ends_with(".parquet"));
    let (_, got) = rows(std::fs::read(object[0]).expect("read object"));
    let ids: Vec<&Field> = got.iter().map(|r| &r[0].1).collect();
    assert_eq!(ids, [&Field::Long(1), &Field::Long(3)]);
    let errors = errors[0];
    let rel = errors.strip_prefix(&out).expect("under out").to_string_lossy().into_owned();
    assert!(rel.starts_with("errors/format-conversion-failed/"), "{rel}");
    let text = std::fs::read_to_string(errors).expect("read error output");
    let mut raw = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_eq!(v["errorCode"], "DataFormatConversion.MalformedData");
        assert!(v["errorMessage"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        let data = base64::engine::general_purpose::STANDARD
            .decode(v["rawData"].as_str().expect("rawData"))
            .expect("base64");
        raw.push(serde_json::from_slice::<serde_json::Value>(&data).expect("the record"));
    }
    assert_eq!(raw, [records[1].clone(), records[2].clone(), records[4].clone()]);
    store.close().await;
}

fn stored(records: &[&str]) -> Vec<weir_collector::store::StoredRecord> {
    records
        .iter()
        .enumerate()
        .map(|(i, data)| weir_collector::store::StoredRecord {
            sequence: weir_collector::store::SequenceNumber::new(0, i as u64),
            arrival_ms: T0,
            partition_key: "k".into(),
            data: Bytes::from(data.to_string()),
            explicit_hash_key: None,
            producer_timestamp_ms: None,
        })
        .collect()
}

#[test]
fn bad_records_are_named_and_the_others_written() {
    let schema = schema(ParquetCompression::Snappy);
    let batch = stored(&[
        r#"{"id": 1, "ok": true}"#,
        "not json",
        r#"[1, 2]"#,
        r#"{"id": "one"}"#,
        r#"{"ok": true}"#,
        r#"{"id": 6, "ok": "yes"}"#,
        r#"{"id": 7, "reading": {"temp": 1e3}}"#,
        r#"{"id": 9223372036854775808}"#,
    ]);
    let converted = convert(&schema, &batch).expect("convert");
    assert_eq!(converted.rows, 2);
    let reasons: Vec<(usize, String)> = converted
        .rejected
        .iter()
        .map(|r| {
            let column = match &r.error {
                ConvertError::NotAnObject { sequence, .. } => {
                    assert_eq!(*sequence, batch[r.index].sequence);
                    String::new()
                }
                ConvertError::Field { sequence, column, .. } => {
                    assert_eq!(*sequence, batch[r.index].sequence);
                    column.clone()
                }
                e => panic!("unexpected {e}"),
            };
            (r.index, column)
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (1, String::new()),
            (2, String::new()),
            (3, "id".into()),
            (4, "id".into()),
            (5, "ok".into()),
            (7, "id".into()),
        ]
    );
    let text = converted.rejected[3].error.to_string();
    assert!(text.contains("\"id\"") && text.contains("not nullable"), "{text}");
    let (_, got) = rows(converted.body.expect("a file of the good records"));
    assert_eq!(
        got,
        [
            expected_row(1, None, None, Some(true), None),
            expected_row(7, None, Some(1000.0), None, None),
        ]
    );

    // All rejected: no file.
    let none = convert(&schema, &stored(&["{}"])).expect("convert");
    assert_eq!((none.body, none.rows, none.rejected.len()), (None, 0, 1));

    // Record by record, as a delivery sorts out records for the error output.
    let handle = schema.clone().into_format().expect("schema");
    let checked: Vec<usize> =
        (0..batch.len()).filter(|&i| handle.check(&batch[i]).is_err()).collect();
    assert_eq!(checked, converted.rejected.iter().map(|r| r.index).collect::<Vec<_>>());

    // `encode` (a whole batch) names the first bad record and field.
    let format = RecordFormat::Parquet(schema.into_format().expect("schema"));
    let e = weir_collector::firehose::encode::encode(&batch, &format, Compression::None)
        .expect_err("bad records");
    assert!(matches!(e, FirehoseError::Convert(ConvertError::NotAnObject { .. })), "{e}");
}

#[test]
fn parquet_settings_are_checked() {
    let format =
        RecordFormat::Parquet(schema(ParquetCompression::Snappy).into_format().expect("ok"));
    let config = DeliveryConfig {
        format,
        compression: Compression::Gzip,
        ..DeliveryConfig::new("to-parquet", STREAM)
    };
    assert!(matches!(config.validate(), Err(FirehoseError::InvalidFormat(_))));
    let e = ParquetSchema::new(vec![]).into_format().expect_err("no columns");
    assert_eq!(e.key, "columns");
}

#[test]
fn toml_parquet_sections_and_their_errors() {
    use std::path::Path;
    use weir_collector::config::Config;
    let base = "[[firehose]]\nname = \"p\"\nsource_stream = \"s\"\n";
    let good = format!(
        "{base}output = \"parquet\"\n[firehose.parquet]\ncompression = \"zstd\"\n\
         [[firehose.parquet.columns]]\nname = \"id\"\ntype = \"int64\"\nnullable = false\n\
         [[firehose.parquet.columns]]\nname = \"at\"\ntype = \"timestamp-millis\"\npath = \"/meta/at\"\n"
    );
    let c = Config::parse(&good, Path::new("c.toml")).expect("parse");
    let specs = c.firehose_specs().expect("specs");
    let config = specs[0].delivery_config().expect("delivery config");
    let RecordFormat::Parquet(format) = &config.format else { panic!("{:?}", config.format) };
    assert_eq!(format.schema().compression, ParquetCompression::Zstd);
    assert_eq!(format.schema().columns.len(), 2);
    assert_eq!(format.schema().columns[1].path.as_deref(), Some("/meta/at"));
    assert_eq!(config.extension(), ".parquet");

    for (text, key) in [
        (format!("{base}output = \"parquet\"\n"), "`firehose[0].parquet`"),
        (
            format!(
                "{base}[firehose.parquet]\n[[firehose.parquet.columns]]\nname = \"a\"\ntype = \"string\"\n"
            ),
            "`firehose[0].parquet`",
        ),
        (
            format!(
                "{base}output = \"parquet\"\ncompression = \"gzip\"\n[firehose.parquet]\n\
                 [[firehose.parquet.columns]]\nname = \"a\"\ntype = \"string\"\n"
            ),
            "`firehose[0].compression`",
        ),
        (
            format!("{base}output = \"parquet\"\n[firehose.parquet]\ncolumns = []\n"),
            "`firehose[0].parquet.columns`",
        ),
        (
            format!(
                "{base}output = \"parquet\"\n[firehose.parquet]\n[[firehose.parquet.columns]]\n\
                 name = \"a\"\ntype = \"string\"\npath = \"x..y\"\n"
            ),
            "`firehose[0].parquet.columns[0].path`",
        ),
    ] {
        let e = Config::parse(&text, Path::new("c.toml")).expect_err(&text);
        assert!(e.to_string().contains(key), "{e} / {key}");
    }
    // Unknown types and keys name their line.
    let e = Config::parse(
        &format!(
            "{base}output = \"parquet\"\n[firehose.parquet]\n[[firehose.parquet.columns]]\n\
             name = \"a\"\ntype = \"int32\"\n"
        ),
        Path::new("c.toml"),
    )
    .expect_err("unknown type");
    assert!(e.to_string().starts_with("c.toml:8:") && e.to_string().contains("int32"), "{e}");
}
