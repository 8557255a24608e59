//! The AWS CLI (`pip install awscli`; the test command installs it when
//! missing) against the real collector: create-stream, put-record,
//! get-shard-iterator, get-records, with `--endpoint-url`.

mod kinesis_support;

use std::process::Command;

use kinesis_support::start;

/// Runs `aws kinesis <args>` against `endpoint` and parses its JSON output.
fn aws(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let tmp = std::env::temp_dir();
    let out = Command::new("aws")
        .args(["--endpoint-url", endpoint, "--output", "json", "kinesis"])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "weir")
        .env("AWS_SECRET_ACCESS_KEY", "weir")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", tmp.join("weir-no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", tmp.join("weir-no-aws-credentials"))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_PAGER", "")
        .output()
        .unwrap_or_else(|e| {
            panic!("running the AWS CLI (`aws`): {e}; install it with `pip install awscli` (scripts/test does)")
        });
    assert!(
        out.status.success(),
        "aws kinesis {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "aws kinesis {args:?} printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Version 2 of the CLI wants `--cli-binary-format raw-in-base64-out` to
/// take `--data` as raw text, as version 1 does by default.
fn binary_format_args() -> Vec<&'static str> {
    let v = Command::new("aws").arg("--version").output().map(|o| {
        let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
        s.push_str(&String::from_utf8_lossy(&o.stderr));
        s
    });
    match v {
        Ok(s) if s.starts_with("aws-cli/1.") => Vec::new(),
        _ => vec!["--cli-binary-format", "raw-in-base64-out"],
    }
}

#[test]
fn aws_cli_creates_puts_and_reads_records() {
    let (c, addr) = start(&[]);
    let endpoint = format!("http://{addr}");
    aws(&endpoint, &["create-stream", "--stream-name", "cli", "--shard-count", "2"]);
    let d = aws(&endpoint, &["describe-stream-summary", "--stream-name", "cli"]);
    assert_eq!(d["StreamDescriptionSummary"]["StreamStatus"], "ACTIVE", "{}", c.report());

    let mut put_args = vec![
        "put-record",
        "--stream-name",
        "cli",
        "--partition-key",
        "sensor-1",
        "--data",
        "hello weir",
    ];
    put_args.extend(binary_format_args());
    let put = aws(&endpoint, &put_args);
    let shard = put["ShardId"].as_str().expect("ShardId").to_owned();
    let sequence = put["SequenceNumber"].as_str().expect("SequenceNumber").to_owned();
    assert_eq!(sequence.len(), 39);

    let it = aws(
        &endpoint,
        &[
            "get-shard-iterator",
            "--stream-name",
            "cli",
            "--shard-id",
            &shard,
            "--shard-iterator-type",
            "TRIM_HORIZON",
        ],
    );
    let it = it["ShardIterator"].as_str().expect("ShardIterator").to_owned();
    let got = aws(&endpoint, &["get-records", "--shard-iterator", &it]);
    let records = got["Records"].as_array().expect("Records");
    assert_eq!(records.len(), 1, "{got}");
    assert_eq!(records[0]["PartitionKey"], "sensor-1");
    assert_eq!(records[0]["SequenceNumber"], sequence.as_str());
    // The CLI prints blobs as base64: "hello weir".
    assert_eq!(records[0]["Data"], "aGVsbG8gd2Vpcg==");
    assert!(got["NextShardIterator"].is_string());
}
