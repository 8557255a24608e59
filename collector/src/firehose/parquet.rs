//! Conversion of JSON records to Parquet: a delivery stream with
//! `format = "parquet"` writes each batch as one Parquet file (one row group)
//! whose columns a [`ParquetSchema`] from the configuration defines, instead
//! of the records as they are.
//!
//! # Columns
//!
//! Each column has a name, a type and optionally where its value lives in a
//! record: a JSON pointer (`/device/id`) or a dotted path (`device.id`);
//! without one, the record's top-level field of the column's name. Values
//! convert strictly:
//!
//! | type               | Parquet                                  | JSON value                      |
//! |--------------------|------------------------------------------|---------------------------------|
//! | `string`           | BYTE_ARRAY, logical type STRING          | a string                        |
//! | `int64`            | INT64                                    | an integer within i64           |
//! | `double`           | DOUBLE                                   | any number                      |
//! | `boolean`          | BOOLEAN                                  | `true` or `false`               |
//! | `timestamp-millis` | INT64, TIMESTAMP(MILLIS, adjusted to UTC) | an integer, ms since the epoch |
//!
//! A missing field or a JSON `null` is a Parquet null when the column is
//! `nullable` (the default; the column is then OPTIONAL, else REQUIRED), and
//! a conversion failure otherwise. A record that is not a JSON object, or one
//! of whose fields does not convert, is *rejected*: [`convert`] writes the
//! other records and names each rejected one with its column and reason
//! ([`ConvertError`]), and [`ParquetFormat::check`] tells it for one record:
//! the delivery stream sends such records to the error output (error output
//! type `format-conversion-failed`) before it encodes a batch, so
//! [`encode`](super::encode::encode) only sees records that convert.
//!
//! # Compression
//!
//! Parquet compresses its pages itself (snappy by default, zstd or none):
//! the delivery stream's outer compression must be `none`, and objects end in
//! `.parquet`.
//!
//! # Cargo feature
//!
//! The writer needs the `parquet` crate (low-level column writers, no arrow),
//! behind the collector's `parquet` feature (on by default: it adds about 25 s
//! to a clean debug build). Without it the schema types still parse and
//! [`DeliveryConfig::validate`](super::DeliveryConfig::validate) refuses
//! Parquet output.
//!
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::query::JsonQuery;

use crate::store::{SequenceNumber, StoredRecord};

/// Most columns in a schema.
pub const MAX_COLUMNS: usize = 1_000;
/// zstd level of Parquet pages when zstd is chosen.
pub const PARQUET_ZSTD_LEVEL: i32 = 3;

/// The type of a column (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColumnType {
    /// UTF-8 string.
    String,
    /// Signed 64-bit integer.
    Int64,
    /// 64-bit float.
    Double,
    /// Boolean.
    Boolean,
    /// Milliseconds since the Unix epoch, UTC.
    TimestampMillis,
}

impl ColumnType {
    /// The name used in configurations.
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Int64 => "int64",
            Self::Double => "double",
            Self::Boolean => "boolean",
            Self::TimestampMillis => "timestamp-millis",
        }
    }
}

/// Page compression inside Parquet files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ParquetCompression {
    /// Uncompressed pages.
    None,
    /// Snappy (Parquet's usual default).
    #[default]
    Snappy,
    /// zstd at [`PARQUET_ZSTD_LEVEL`].
    Zstd,
}

/// One column of a [`ParquetSchema`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetColumn {
    /// Column name in the Parquet file.
    pub name: String,
    /// Its type.
    #[serde(rename = "type")]
    pub kind: ColumnType,
    /// Where the value lives in a record: a JSON pointer (`/a/b`) or a dotted
    /// path (`a.b`); `None`: the top-level field called `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Whether a missing or `null` value is a Parquet null (else the record
    /// is rejected).
    #[serde(default = "default_nullable")]
    pub nullable: bool,
}

fn default_nullable() -> bool {
    true
}

impl ParquetColumn {
    /// A nullable column read from the top-level field `name`.
    pub fn new(name: impl Into<String>, kind: ColumnType) -> Self {
        Self { name: name.into(), kind, path: None, nullable: true }
    }

    /// Where this column's value lives in a record.
    ///
    /// # Errors
    /// Why `path` is not a query.
    pub fn query(&self) -> Result<JsonQuery, String> {
        match self.path.as_deref() {
            None => Ok(JsonQuery::field(&self.name)),
            Some(p) => JsonQuery::parse(p),
        }
    }
}

/// The columns of Parquet output and their page compression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParquetSchema {
    /// The columns, in file order.
    pub columns: Vec<ParquetColumn>,
    /// Page compression.
    #[serde(default)]
    pub compression: ParquetCompression,
}

/// A schema that cannot be used; `key` names the offending part
/// (`columns[2].path`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {message}")]
pub struct SchemaError {
    /// Which part of the schema.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl ParquetSchema {
    /// A schema of `columns` with snappy pages.
    pub fn new(columns: Vec<ParquetColumn>) -> Self {
        Self { columns, compression: ParquetCompression::default() }
    }

    /// Checks column names (non-empty, unique), paths and the column count.
    ///
    /// # Errors
    /// The first problem, naming its key.
    pub fn validate(&self) -> Result<(), SchemaError> {
        let err = |key: String, message: String| Err(SchemaError { key, message });
        if self.columns.is_empty() {
            return err("columns".into(), "at least one column is required".into());
        }
        if self.columns.len() > MAX_COLUMNS {
            return err("columns".into(), format!("more than {MAX_COLUMNS} columns"));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, c) in self.columns.iter().enumerate() {
            if c.name.is_empty() || c.name.chars().any(char::is_control) {
                return err(format!("columns[{i}].name"), format!("{:?} is not a name", c.name));
            }
            if !names.insert(c.name.as_str()) {
                return err(format!("columns[{i}].name"), format!("{:?} appears twice", c.name));
            }
            if let (Some(p), Err(reason)) = (&c.path, c.query()) {
                let m = format!("{p:?}: {reason}; use a JSON pointer (/a/b) or a path (a.b)");
                return err(format!("columns[{i}].path"), m);
            }
        }
        Ok(())
    }

    /// Each column's query, in column order.
    ///
    /// # Errors
    /// An invalid schema, naming its key.
    fn queries(&self) -> Result<Vec<JsonQuery>, SchemaError> {
        self.validate()?;
        Ok(self.columns.iter().filter_map(|c| c.query().ok()).collect())
    }

    /// Validates the schema and returns the handle a
    /// [`RecordFormat::Parquet`](super::RecordFormat) carries.
    ///
    /// # Errors
    /// An invalid schema.
    pub fn into_format(self) -> Result<ParquetFormat, SchemaError> {
        let queries = self.queries()?;
        Ok(ParquetFormat(Arc::new(Compiled { schema: self, queries })))
    }
}

/// A cheaply cloned, shared handle to a validated [`ParquetSchema`] and its
/// columns' parsed queries; made by [`ParquetSchema::into_format`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetFormat(Arc<Compiled>);

/// A schema with its columns' queries, parsed once.
#[derive(Debug, PartialEq, Eq)]
struct Compiled {
    schema: ParquetSchema,
    queries: Vec<JsonQuery>,
}

impl ParquetFormat {
    /// The schema.
    pub fn schema(&self) -> &ParquetSchema {
        &self.0.schema
    }

    /// [`convert`] with the queries parsed already.
    ///
    /// # Errors
    /// As [`convert`].
    pub fn convert(&self, records: &[StoredRecord]) -> Result<Converted, ConvertError> {
        convert_with(&self.0.schema, &self.0.queries, records)
    }

    /// Whether `record` converts: a delivery can send the records that do
    /// not to the error output before it encodes a batch (then
    /// [`encode`](super::encode::encode) never fails on a record).
    ///
    /// # Errors
    /// Why the record would be rejected.
    pub fn check(&self, record: &StoredRecord) -> Result<(), ConvertError> {
        row(&self.0.schema, &self.0.queries, record).map(drop)
    }
}

/// Why a record was rejected, or a batch could not be written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConvertError {
    /// The record is not a JSON object.
    #[error("record {sequence}: not a JSON object: {reason}")]
    NotAnObject {
        /// The record.
        sequence: SequenceNumber,
        /// Why.
        reason: String,
    },
    /// A field is missing from a non-nullable column, or does not convert.
    #[error("record {sequence}: column {column:?}: {reason}")]
    Field {
        /// The record.
        sequence: SequenceNumber,
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// The Parquet writer failed.
    #[error("writing Parquet: {0}")]
    Write(String),
    /// The schema is invalid.
    #[error("invalid Parquet schema: {0}")]
    Schema(#[from] SchemaError),
    /// This collector was built without the `parquet` feature.
    #[error("Parquet output needs the collector built with the `parquet` feature")]
    NotBuilt,
}

/// A record [`convert`] left out.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Its index in the batch.
    pub index: usize,
    /// Why.
    pub error: ConvertError,
}

/// What [`convert`] made of a batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    /// The Parquet file of the accepted records (`None` if all were
    /// rejected).
    pub body: Option<Vec<u8>>,
    /// How many records it holds.
    pub rows: usize,
    /// The records left out, in batch order.
    pub rejected: Vec<Rejected>,
}

/// One column's values while a batch is converted.
enum Values {
    Str(Vec<Vec<u8>>),
    Long(Vec<i64>),
    Double(Vec<f64>),
    Bool(Vec<bool>),
}

/// A converted cell.
enum Cell {
    Null,
    Str(Vec<u8>),
    Long(i64),
    Double(f64),
    Bool(bool),
}

fn cell(
    column: &ParquetColumn,
    query: &JsonQuery,
    record: &serde_json::Value,
    sequence: SequenceNumber,
) -> Result<Cell, ConvertError> {
    use serde_json::Value;
    let fail =
        |reason: String| ConvertError::Field { sequence, column: column.name.clone(), reason };
    let value = match query.get(record) {
        None | Some(Value::Null) if column.nullable => return Ok(Cell::Null),
        None => return Err(fail("missing, and the column is not nullable".into())),
        Some(Value::Null) => return Err(fail("null, and the column is not nullable".into())),
        Some(v) => v,
    };
    let wrong = || {
        let mut shown = value.to_string();
        if shown.len() > 64 {
            let mut end = 64;
            while !shown.is_char_boundary(end) {
                end -= 1;
            }
            shown.truncate(end);
            shown.push('…');
        }
        fail(format!("{shown} is not a {}", column.kind.name()))
    };
    Ok(match column.kind {
        ColumnType::String => Cell::Str(value.as_str().ok_or_else(wrong)?.as_bytes().to_vec()),
        ColumnType::Int64 | ColumnType::TimestampMillis => {
            Cell::Long(value.as_i64().ok_or_else(wrong)?)
        }
        ColumnType::Double => Cell::Double(value.as_f64().ok_or_else(wrong)?),
        ColumnType::Boolean => Cell::Bool(value.as_bool().ok_or_else(wrong)?),
    })
}

/// The cells of one record, or why it is rejected.
fn row(
    schema: &ParquetSchema,
    queries: &[JsonQuery],
    record: &StoredRecord,
) -> Result<Vec<Cell>, ConvertError> {
    let sequence = record.sequence;
    let value: serde_json::Value = serde_json::from_slice(&record.data)
        .map_err(|e| ConvertError::NotAnObject { sequence, reason: e.to_string() })?;
    if !value.is_object() {
        return Err(ConvertError::NotAnObject { sequence, reason: "not an object".into() });
    }
    schema.columns.iter().zip(queries).map(|(c, q)| cell(c, q, &value, sequence)).collect()
}

/// Converts a batch: the accepted records as one Parquet file with one row
/// group, and the rejected ones.
///
/// # Errors
/// [`ConvertError::Schema`] for an invalid schema, [`ConvertError::Write`]
/// if the writer fails, [`ConvertError::NotBuilt`] without the `parquet`
/// feature. Rejected records are not errors.
pub fn convert(
    schema: &ParquetSchema,
    records: &[StoredRecord],
) -> Result<Converted, ConvertError> {
    convert_with(schema, &schema.queries()?, records)
}

fn convert_with(
    schema: &ParquetSchema,
    queries: &[JsonQuery],
    records: &[StoredRecord],
) -> Result<Converted, ConvertError> {
    let mut columns: Vec<(Values, Vec<i16>)> = schema
        .columns
        .iter()
        .map(|c| {
            let n = records.len();
            let values = match c.kind {
                ColumnType::String => Values::Str(Vec::with_capacity(n)),
                ColumnType::Int64 | ColumnType::TimestampMillis => {
                    Values::Long(Vec::with_capacity(n))
                }
                ColumnType::Double => Values::Double(Vec::with_capacity(n)),
                ColumnType::Boolean => Values::Bool(Vec::with_capacity(n)),
            };
            (values, Vec::with_capacity(if c.nullable { n } else { 0 }))
        })
        .collect();
    let mut out = Converted::default();
    for (index, record) in records.iter().enumerate() {
        let cells = match row(schema, queries, record) {
            Ok(cells) => cells,
            Err(error) => {
                out.rejected.push(Rejected { index, error });
                continue;
            }
        };
        out.rows += 1;
        for ((cell, (values, levels)), column) in
            cells.into_iter().zip(columns.iter_mut()).zip(&schema.columns)
        {
            let present = !matches!(cell, Cell::Null);
            if column.nullable {
                levels.push(i16::from(present));
            }
            match (cell, values) {
                (Cell::Str(s), Values::Str(v)) => v.push(s),
                (Cell::Long(x), Values::Long(v)) => v.push(x),
                (Cell::Double(x), Values::Double(v)) => v.push(x),
                (Cell::Bool(x), Values::Bool(v)) => v.push(x),
                _ => {}
            }
        }
    }
    if out.rows > 0 {
        out.body = Some(write(schema, columns)?);
    }
    Ok(out)
}

#[cfg(not(feature = "parquet"))]
fn write(_: &ParquetSchema, _: Vec<(Values, Vec<i16>)>) -> Result<Vec<u8>, ConvertError> {
    Err(ConvertError::NotBuilt)
}

#[cfg(feature = "parquet")]
fn write(
    schema: &ParquetSchema,
    columns: Vec<(Values, Vec<i16>)>,
) -> Result<Vec<u8>, ConvertError> {
    use std::sync::Arc;

    use parquet::basic::{LogicalType, Repetition, TimeUnit, Type as PhysicalType, ZstdLevel};
    use parquet::data_type::{BoolType, ByteArray, DoubleType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::types::Type;

    let perr = |e: parquet::errors::ParquetError| ConvertError::Write(e.to_string());
    let mut fields = Vec::with_capacity(schema.columns.len());
    for c in &schema.columns {
        let (physical, logical) = match c.kind {
            ColumnType::String => (PhysicalType::BYTE_ARRAY, Some(LogicalType::String)),
            ColumnType::Int64 => (PhysicalType::INT64, None),
            ColumnType::Double => (PhysicalType::DOUBLE, None),
            ColumnType::Boolean => (PhysicalType::BOOLEAN, None),
            ColumnType::TimestampMillis => {
                (PhysicalType::INT64, Some(LogicalType::timestamp(true, TimeUnit::MILLIS)))
            }
        };
        let repetition = if c.nullable { Repetition::OPTIONAL } else { Repetition::REQUIRED };
        let field = Type::primitive_type_builder(&c.name, physical)
            .with_repetition(repetition)
            .with_logical_type(logical)
            .build()
            .map_err(perr)?;
        fields.push(Arc::new(field));
    }
    let root = Type::group_type_builder("record").with_fields(fields).build().map_err(perr)?;
    let compression = match schema.compression {
        ParquetCompression::None => parquet::basic::Compression::UNCOMPRESSED,
        ParquetCompression::Snappy => parquet::basic::Compression::SNAPPY,
        ParquetCompression::Zstd => {
            parquet::basic::Compression::ZSTD(ZstdLevel::try_new(PARQUET_ZSTD_LEVEL).map_err(perr)?)
        }
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .set_created_by(format!("weir-collector {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut body = Vec::new();
    let mut writer =
        SerializedFileWriter::new(&mut body, Arc::new(root), Arc::new(props)).map_err(perr)?;
    let mut group = writer.next_row_group().map_err(perr)?;
    for (values, levels) in columns {
        let Some(mut col) = group.next_column().map_err(perr)? else {
            return Err(ConvertError::Write("fewer column writers than columns".into()));
        };
        let levels = if levels.is_empty() { None } else { Some(levels.as_slice()) };
        match values {
            Values::Str(v) => {
                let v: Vec<ByteArray> = v.into_iter().map(ByteArray::from).collect();
                col.typed::<parquet::data_type::ByteArrayType>().write_batch(&v, levels, None)
            }
            Values::Long(v) => col.typed::<Int64Type>().write_batch(&v, levels, None),
            Values::Double(v) => col.typed::<DoubleType>().write_batch(&v, levels, None),
            Values::Bool(v) => col.typed::<BoolType>().write_batch(&v, levels, None),
        }
        .map_err(perr)?;
        col.close().map_err(perr)?;
    }
    group.close().map_err(perr)?;
    writer.close().map_err(perr)?;
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_checks_name_the_key() {
        assert_eq!(ParquetSchema::new(vec![]).validate().map_err(|e| e.key), Err("columns".into()));
        let twice = ParquetSchema::new(vec![
            ParquetColumn::new("a", ColumnType::Int64),
            ParquetColumn::new("a", ColumnType::String),
        ]);
        assert_eq!(twice.validate().map_err(|e| e.key), Err("columns[1].name".into()));
        let mut bad_path = ParquetColumn::new("a", ColumnType::Int64);
        bad_path.path = Some("a..b".into());
        let e = ParquetSchema::new(vec![bad_path]).validate().map_err(|e| e.key);
        assert_eq!(e, Err("columns[0].path".into()));
    }

    #[test]
    fn paths_reach_nested_fields() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"a":{"b":[1,{"c":"x"}]},"a.b":2}"#).expect("json");
        let mut c = ParquetColumn::new("c", ColumnType::String);
        c.path = Some("/a/b/1/c".into());
        assert_eq!(c.query().expect("query").get(&v), Some(&serde_json::json!("x")));
        c.path = Some("a.b.1.c".into());
        assert_eq!(c.query().expect("query").get(&v), Some(&serde_json::json!("x")));
        let top = ParquetColumn::new("a.b", ColumnType::Int64);
        assert_eq!(top.query().expect("query").get(&v), Some(&serde_json::json!(2)));
    }
}
