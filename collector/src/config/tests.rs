//! Tests of reading the configuration file and its errors.

use super::*;

#[test]
fn empty_file_gives_the_defaults() {
    let c = Config::parse("", Path::new("c.toml")).expect("parse");
    assert_eq!(c.data_dir, PathBuf::from("weir-data"));
    assert_eq!(c.store_config().expect("store").fsync, FsyncPolicy::Always);
}

#[test]
fn errors_name_file_line_and_key() {
    let e = Config::parse("data_dir = \"d\"\n[store]\nfsinc = \"never\"\n", Path::new("c.toml"))
        .expect_err("unknown key");
    let text = e.to_string();
    assert!(text.starts_with("c.toml:3:") && text.contains("fsinc"), "{text}");
    let e = Config::parse("[store]\nfsync = \"sometimes\"\n", Path::new("c.toml"))
        .expect_err("bad policy");
    assert!(e.to_string().contains("`store.fsync`"), "{e}");
    let e = Config::parse("[store]\nsegment_max_bytes = 10\n", Path::new("c.toml"))
        .expect_err("small segment");
    assert!(e.to_string().contains("`store.segment_max_bytes`"), "{e}");
    let e = Config::parse("[http]\nlisten = \"localhost\"\n", Path::new("c.toml"))
        .expect_err("bad listen address");
    assert!(e.to_string().contains("`http.listen`"), "{e}");
    let e = Config::parse("[kinesis]\nregion = \"US East\"\n", Path::new("c.toml"))
        .expect_err("bad region");
    assert!(e.to_string().contains("`kinesis.region`"), "{e}");
    let e = Config::parse("[http]\nlisen = \"127.0.0.1:1\"\n", Path::new("c.toml"))
        .expect_err("unknown key");
    assert!(e.to_string().starts_with("c.toml:2:") && e.to_string().contains("lisen"), "{e}");
}

#[test]
fn firehose_sections() {
    let c = Config::parse(
        "data_dir = \"d\"\n[[firehose]]\nname = \"a\"\nsource_stream = \"s\"\ncompression = \"gzip\"\n",
        Path::new("c.toml"),
    )
    .expect("parse");
    let specs = c.firehose_specs().expect("specs");
    assert_eq!(specs.len(), 1);
    assert_eq!(specs[0].directory, PathBuf::from("d/firehose/a"));
    for (text, key) in [
        ("name = \"a\"\n", "`firehose[0].source_stream`"),
        ("name = \"a/b\"\nsource_stream = \"s\"\n", "`firehose[0].name`"),
        (
            "name = \"a\"\nsource_stream = \"s\"\nbuffer_size_mib = 0\n",
            "`firehose[0].buffer_size_mib`",
        ),
        (
            "name = \"a\"\nsource_stream = \"s\"\nbuffer_interval_secs = 901\n",
            "`firehose[0].buffer_interval_secs`",
        ),
        (
            "name = \"a\"\nsource_stream = \"s\"\ncompression = \"lz4\"\n",
            "`firehose[0].compression`",
        ),
        ("name = \"a\"\nsource_stream = \"s\"\noutput = \"csv\"\n", "`firehose[0].output`"),
        (
            "name = \"a\"\nsource_stream = \"s\"\nretry_duration_secs = 7201\n",
            "`firehose[0].retry_duration_secs`",
        ),
        (
            "name = \"a\"\nsource_stream = \"s\"\nprefix = \"!{partitionKeyFromQuery:x}/\"\n",
            "`firehose[0].partition_keys`",
        ),
        (
            "name = \"a\"\nsource_stream = \"s\"\nerror_prefix = \"!{nope:x}\"\n",
            "`firehose[0].error_prefix`",
        ),
        (
            "name = \"a\"\nsource_stream = \"s\"\n[firehose.http]\nurl = \"ftp://x\"\n",
            "`firehose[0].http`",
        ),
        (
            "name = \"a\"\nsource_stream = \"s\"\n[firehose.s3]\nbucket = \"B\"\n",
            "`firehose[0].s3`",
        ),
    ] {
        let e =
            Config::parse(&format!("[[firehose]]\n{text}"), Path::new("c.toml")).expect_err(text);
        assert!(e.to_string().contains(key), "{e} / {key}");
    }
    let e =
        Config::parse("[[firehose]]\nname = \"a\"\nsourcestream = \"s\"\n", Path::new("c.toml"))
            .expect_err("unknown key");
    assert!(e.to_string().contains("sourcestream"), "{e}");
    let c = Config::parse(
        "[[firehose]]\nname = \"p\"\nsource_stream = \"s\"\n\
         prefix = \"d=!{partitionKeyFromQuery:dev}/\"\nretry_duration_secs = 0\n\
         [firehose.partition_keys]\ndev = \"device.id\"\n\
         [firehose.s3]\nbucket = \"archive\"\nendpoint = \"http://127.0.0.1:9000\"\n\
         [firehose_s3]\nregion = \"eu-west-1\"\n",
        Path::new("c.toml"),
    )
    .expect("parse");
    let specs = c.firehose_specs().expect("specs");
    assert_eq!(specs[0].partition_keys, [("dev".to_owned(), "device.id".to_owned())]);
    assert_eq!(specs[0].retry_duration_secs, 0);
    assert!(matches!(
        &specs[0].destination,
        crate::firehose::manager::DestinationSpec::S3(s) if s.bucket == "archive"
    ));
    assert_eq!(c.firehose_s3.map(|s| s.settings("b").region).as_deref(), Some("eu-west-1"));
}
