//! `weir-collector streams ...` and `weir-collector tail ...` against a
//! running collector: the operator's command line for people without the
//! AWS CLI.

mod kinesis_support;

use std::net::SocketAddr;
use std::process::Command;

use aws_sdk_kinesis::primitives::Blob;
use kinesis_support::{sdk, start};
use weir_tests::harness::binary;

fn weir(addr: SocketAddr, args: &[&str]) -> String {
    let out = Command::new(binary("weir-collector"))
        .args(args)
        .arg("--endpoint")
        .arg(format!("http://{addr}"))
        .output()
        .expect("run weir-collector");
    assert!(
        out.status.success(),
        "weir-collector {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8 output")
}

#[tokio::test]
async fn streams_commands_and_tail_replay_in_order() {
    let (_c, addr) = start(&[]);
    assert!(weir(addr, &["streams", "create", "ops", "--shards", "2"]).contains("created ops"));
    let list = weir(addr, &["streams", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("ops ") && l.contains("ACTIVE") && l.contains("PROVISIONED")),
        "{list}"
    );

    let client = sdk(addr);
    let mut sent = Vec::new();
    for i in 0..40 {
        let key = format!("dev-{}", i % 5);
        let data = if i == 7 { vec![0u8, 159, 146, 150] } else { format!("temp={i}").into_bytes() };
        let r = client
            .put_record()
            .stream_name("ops")
            .partition_key(&key)
            .data(Blob::new(data.clone()))
            .send()
            .await
            .expect("PutRecord");
        sent.push((key, r.sequence_number().to_owned(), data));
    }
    // Reshard in the middle: split, then more records, then merge back.
    let out = weir(addr, &["streams", "split", "ops", "shardId-000000000000"]);
    assert!(out.contains("split shardId-000000000000"), "{out}");
    for i in 40..60 {
        let key = format!("dev-{}", i % 5);
        let data = format!("temp={i}").into_bytes();
        let r = client
            .put_record()
            .stream_name("ops")
            .partition_key(&key)
            .data(Blob::new(data.clone()))
            .send()
            .await
            .expect("PutRecord");
        sent.push((key, r.sequence_number().to_owned(), data));
    }
    let out =
        weir(addr, &["streams", "merge", "ops", "shardId-000000000002", "shardId-000000000003"]);
    assert!(out.contains("merged"), "{out}");
    let described = weir(addr, &["streams", "describe", "ops"]);
    assert!(described.contains("open       2 shards"), "{described}");
    assert!(described.lines().filter(|l| l.contains(" closed ")).count() == 3, "{described}");

    // tail from TRIM_HORIZON: every record once, each key's records in order.
    let out = weir(addr, &["tail", "ops"]);
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.len(), 60, "{out}");
    for key in (0..5).map(|k| format!("dev-{k}")) {
        let got: Vec<&str> = lines.iter().filter(|l| l[0] == key).map(|l| l[1]).collect();
        let want: Vec<&str> = sent.iter().filter(|s| s.0 == key).map(|s| s.1.as_str()).collect();
        assert_eq!(got, want, "{key}");
    }
    let binary_line = lines.iter().find(|l| l[1] == sent[7].1).expect("record 7");
    assert_eq!(binary_line[3], "009f9296", "binary data prints as hex");
    assert!(binary_line[2].ends_with('Z') && binary_line[2].contains('T'), "{binary_line:?}");
    let text_line = lines.iter().find(|l| l[1] == sent[8].1).expect("record 8");
    assert_eq!(text_line[3], "temp=8");

    // --from at-seq N starts there (in that shard and its descendants).
    let (key, seq, _) = &sent[45];
    let out = weir(addr, &["tail", "ops", "--from", "at-seq", seq]);
    let first = out.lines().next().expect("a record");
    assert!(first.starts_with(&format!("{key}\t{seq}\t")), "{out}");
    // --from latest without --follow prints nothing and returns.
    assert_eq!(weir(addr, &["tail", "ops", "--from", "latest"]), "");
    // --from at-time in the future: nothing.
    assert_eq!(weir(addr, &["tail", "ops", "--from", "at-time", "2999-01-01T00:00:00Z"]), "");
    assert_eq!(weir(addr, &["tail", "ops", "--hex"]).lines().count(), 60);

    let out = weir(addr, &["streams", "resize", "ops", "4"]);
    assert!(out.contains("from 2 to 4"), "{out}");
    assert!(weir(addr, &["streams", "delete", "ops"]).contains("deleted ops"));
    assert!(!weir(addr, &["streams", "list"]).contains("ops "));
}

#[test]
fn operator_errors_are_clear() {
    let (_c, addr) = start(&[]);
    let out = Command::new(binary("weir-collector"))
        .args(["streams", "describe", "missing", "--endpoint", &format!("http://{addr}")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ResourceNotFoundException") && err.contains("missing"), "{err}");
    let out = Command::new(binary("weir-collector"))
        .args(["tail", "x", "--endpoint", "ftp://nowhere"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://HOST:PORT"));
}

#[tokio::test]
async fn tail_follow_prints_records_as_they_arrive() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::Duration;

    let (_c, addr) = start(&[]);
    let client = sdk(addr);
    client.create_stream().stream_name("live").shard_count(2).send().await.expect("create");
    let mut child = Command::new(binary("weir-collector"))
        .args([
            "tail",
            "live",
            "--from",
            "latest",
            "--follow",
            "--endpoint",
            &format!("http://{addr}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tail --follow");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // `tail` takes its LATEST iterators at start: keep putting (bounded)
    // until lines show up, then check each key's records arrive in order.
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while lines.len() < 10 && std::time::Instant::now() < deadline {
        client
            .put_record()
            .stream_name("live")
            .partition_key(format!("k{}", sent % 2))
            .data(Blob::new(format!("n={sent}").into_bytes()))
            .send()
            .await
            .expect("put");
        sent += 1;
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(50)) {
            lines.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(lines.len() >= 10, "tail --follow printed {lines:?} after {sent} puts");
    for key in ["k0", "k1"] {
        let ns: Vec<u32> = lines
            .iter()
            .filter(|l| l.starts_with(&format!("{key}\t")))
            .filter_map(|l| l.rsplit("n=").next()?.parse().ok())
            .collect();
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "{key}: {ns:?}");
    }
}
