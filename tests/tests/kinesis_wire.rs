//! The Kinesis API at the HTTP level: CBOR 1.1 as the AWS SDK for Java sends
//! it, error bodies in the request's encoding, malformed and hostile requests
//! (which must never take the collector down), `/health` and `/metrics`.

mod kinesis_support;

use ciborium::Value;
use kinesis_support::{get, post, start};

const CBOR: &str = "application/x-amz-cbor-1.1";
const JSON: &str = "application/x-amz-json-1.1";

fn cbor(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).expect("encode CBOR");
    out
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::Text(k.to_owned()), v)).collect())
}

fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_map()
        .and_then(|m| m.iter().find(|(k, _)| k.as_text() == Some(key)).map(|(_, v)| v))
        .unwrap_or_else(|| panic!("no {key} in {v:?}"))
}

fn decode(body: &[u8]) -> Value {
    ciborium::from_reader(body).unwrap_or_else(|e| panic!("answer is not CBOR ({e}): {body:02x?}"))
}

#[tokio::test]
async fn cbor_requests_get_cbor_answers_with_binary_blobs_and_tagged_timestamps() {
    let (_c, addr) = start(&[]);
    let a = post(
        addr,
        Some("CreateStream"),
        CBOR,
        cbor(&map(vec![
            ("StreamName", Value::Text("bin".into())),
            ("ShardCount", Value::Integer(1.into())),
        ])),
    )
    .await;
    assert_eq!((a.status, a.content_type.as_str()), (200, CBOR));
    let payload: Vec<u8> = (0..=255).collect();
    let a = post(
        addr,
        Some("PutRecord"),
        CBOR,
        cbor(&map(vec![
            ("StreamName", Value::Text("bin".into())),
            ("PartitionKey", Value::Text("k".into())),
            ("Data", Value::Bytes(payload.clone())),
        ])),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", decode(&a.body));
    let put = decode(&a.body);
    let sequence = field(&put, "SequenceNumber").as_text().expect("text").to_owned();
    // PutRecords with byte-string blobs too.
    let entries = (0..3)
        .map(|i| {
            map(vec![
                ("PartitionKey", Value::Text(format!("k{i}"))),
                ("Data", Value::Bytes(vec![i; 3])),
            ])
        })
        .collect();
    let a = post(
        addr,
        Some("PutRecords"),
        CBOR,
        cbor(&map(vec![
            ("StreamName", Value::Text("bin".into())),
            ("Records", Value::Array(entries)),
        ])),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(field(&decode(&a.body), "FailedRecordCount"), &Value::Integer(0.into()));

    let a = post(
        addr,
        Some("GetShardIterator"),
        CBOR,
        cbor(&map(vec![
            ("StreamName", Value::Text("bin".into())),
            ("ShardId", Value::Text("shardId-000000000000".into())),
            ("ShardIteratorType", Value::Text("AT_SEQUENCE_NUMBER".into())),
            ("StartingSequenceNumber", Value::Text(sequence.clone())),
        ])),
    )
    .await;
    assert_eq!(a.status, 200);
    let it = field(&decode(&a.body), "ShardIterator").clone();
    let a = post(addr, Some("GetRecords"), CBOR, cbor(&map(vec![("ShardIterator", it)]))).await;
    assert_eq!((a.status, a.content_type.as_str()), (200, CBOR));
    let got = decode(&a.body);
    let records = field(&got, "Records").as_array().expect("array");
    assert_eq!(records.len(), 4);
    assert_eq!(field(&records[0], "Data"), &Value::Bytes(payload));
    assert_eq!(field(&records[0], "SequenceNumber").as_text(), Some(sequence.as_str()));
    match field(&records[0], "ApproximateArrivalTimestamp") {
        Value::Tag(1, t) => assert!(t.as_float().is_some_and(|s| s > 1.6e9), "{t:?}"),
        other => panic!("arrival time is not tag 1: {other:?}"),
    }

    // AT_TIMESTAMP with a tag-1 integer timestamp (seconds), as Java sends.
    let a = post(
        addr,
        Some("GetShardIterator"),
        CBOR,
        cbor(&map(vec![
            ("StreamName", Value::Text("bin".into())),
            ("ShardId", Value::Text("shardId-000000000000".into())),
            ("ShardIteratorType", Value::Text("AT_TIMESTAMP".into())),
            ("Timestamp", Value::Tag(1, Box::new(Value::Integer(0.into())))),
        ])),
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", decode(&a.body));

    // Errors come back in CBOR too, with __type and message.
    let a = post(
        addr,
        Some("DescribeStream"),
        CBOR,
        cbor(&map(vec![("StreamName", Value::Text("none".into()))])),
    )
    .await;
    assert_eq!((a.status, a.content_type.as_str()), (400, CBOR));
    let e = decode(&a.body);
    assert_eq!(field(&e, "__type").as_text(), Some("ResourceNotFoundException"));
    assert!(field(&e, "message").as_text().is_some_and(|m| m.contains("none")));
}

#[tokio::test]
async fn malformed_requests_get_error_names_and_never_hurt_the_collector() {
    let (c, addr) = start(&[]);
    let ok =
        post(addr, Some("CreateStream"), JSON, br#"{"StreamName":"s","ShardCount":1}"#.to_vec())
            .await;
    assert_eq!(ok.status, 200);
    let json_type = |body: &[u8]| -> String {
        let v: serde_json::Value = serde_json::from_slice(body).expect("JSON error body");
        assert!(v["message"].is_string(), "{v}");
        v["__type"].as_str().expect("__type").to_owned()
    };
    let cases: Vec<(Option<&str>, &str, Vec<u8>, &str)> = vec![
        (Some("PutRecord"), JSON, b"{".to_vec(), "SerializationException"),
        (Some("PutRecord"), JSON, b"[]".to_vec(), "SerializationException"),
        (Some("PutRecord"), JSON, br#"{"StreamName":5}"#.to_vec(), "SerializationException"),
        (
            Some("PutRecord"),
            JSON,
            br#"{"StreamName":"s","PartitionKey":"k","Data":"%%%"}"#.to_vec(),
            "SerializationException",
        ),
        (
            Some("PutRecords"),
            JSON,
            br#"{"StreamName":"s","Records":{}}"#.to_vec(),
            "SerializationException",
        ),
        (
            Some("CreateStream"),
            JSON,
            br#"{"StreamName":"t","ShardCount":1.5}"#.to_vec(),
            "SerializationException",
        ),
        (
            Some("CreateStream"),
            JSON,
            br#"{"StreamName":"t","ShardCount":99999999999999999999}"#.to_vec(),
            "SerializationException",
        ),
        (Some("PutRecord"), JSON, br#"{"StreamName":"s"}"#.to_vec(), "ValidationException"),
        (Some("GetRecords"), JSON, b"{}".to_vec(), "ValidationException"),
        (Some("DescribeStream"), JSON, Vec::new(), "ValidationException"),
        (Some("FlyToTheMoon"), JSON, b"{}".to_vec(), "UnknownOperationException"),
        (None, JSON, b"{}".to_vec(), "UnknownOperationException"),
        (Some("PutRecord"), JSON, vec![0xff, 0xfe, 0x00, 0x80], "SerializationException"),
    ];
    for (op, ct, body, expected) in cases {
        let a = post(addr, op, ct, body.clone()).await;
        assert_eq!(a.status, 400, "{op:?} {:?}", String::from_utf8_lossy(&body));
        assert_eq!(json_type(&a.body), expected, "{op:?} {:?}", String::from_utf8_lossy(&body));
    }
    let cbor_cases: Vec<Vec<u8>> = vec![
        vec![0xff],
        vec![0xa1, 0x61],
        vec![0x1b, 0xff, 0xff],
        vec![0x9f; 10_000],
        cbor(&Value::Array(vec![Value::Null])),
        cbor(&map(vec![("StreamName", Value::Bytes(vec![1, 2]))])),
    ];
    for body in cbor_cases {
        let a = post(addr, Some("PutRecord"), CBOR, body.clone()).await;
        assert_eq!(a.status, 400, "{body:02x?}");
        let e = decode(&a.body);
        assert_eq!(field(&e, "__type").as_text(), Some("SerializationException"), "{body:02x?}");
    }
    // Random bytes under every operation name, in both encodings.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for op in weir_collector::api::dispatch::OPERATIONS {
        for ct in [JSON, CBOR] {
            let len = (next() % 300) as usize;
            let body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let a = post(addr, Some(op), ct, body).await;
            assert!(a.status == 400 || a.status == 200, "{op} {ct}: {}", a.status);
        }
    }
    // A body declared over the size limit is refused before it is read.
    let head = oversized_request_head(addr).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-amzn-errortype: serializationexception"),
        "{head}"
    );
    // Still healthy, still serving, nothing panicked.
    assert_eq!(get(addr, "/health").await.0, 200);
    let ok = post(
        addr,
        Some("PutRecord"),
        JSON,
        br#"{"StreamName":"s","PartitionKey":"k","Data":"aGk="}"#.to_vec(),
    )
    .await;
    assert_eq!(ok.status, 200);
    assert!(!c.log().contains("panicked"), "{}", c.report());
}

/// Sends only the head of a PutRecords request declaring a 9 MiB body and
/// returns the head of the answer.
async fn oversized_request_head(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST / HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {JSON}\r\nx-amz-target: Kinesis_20131202.PutRecords\r\ncontent-length: {}\r\n\r\n",
        9 * 1024 * 1024
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(30), read)
        .await
        .expect("an answer in time");
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn health_and_per_shard_metrics() {
    let (_c, addr) = start(&[]);
    let (status, body) = get(addr, "/health").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let a =
        post(addr, Some("CreateStream"), JSON, br#"{"StreamName":"m","ShardCount":1}"#.to_vec())
            .await;
    assert_eq!(a.status, 200);
    for _ in 0..3 {
        let a = post(
            addr,
            Some("PutRecord"),
            JSON,
            br#"{"StreamName":"m","PartitionKey":"k","Data":"aGVsbG8="}"#.to_vec(),
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let a = post(
        addr,
        Some("GetShardIterator"),
        JSON,
        br#"{"StreamName":"m","ShardId":"shardId-000000000000","ShardIteratorType":"TRIM_HORIZON"}"#.to_vec(),
    )
    .await;
    let it: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
    let body = serde_json::json!({"ShardIterator": it["ShardIterator"], "Limit": 1});
    let a = post(addr, Some("GetRecords"), JSON, serde_json::to_vec(&body).expect("json")).await;
    assert_eq!(a.status, 200);
    let (status, text) = get(addr, "/metrics").await;
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        text.lines()
            .find(|l| {
                l.starts_with(name)
                    && l.contains("shard=\"shardId-000000000000\"")
                    && l.contains("stream=\"m\"")
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert_eq!(value("weir_shard_incoming_records_total"), 3.0);
    assert_eq!(value("weir_shard_incoming_bytes_total"), 18.0);
    assert_eq!(value("weir_shard_outgoing_records_total"), 1.0);
    assert_eq!(value("weir_shard_get_records_total"), 1.0);
    assert!(value("weir_shard_iterator_age_milliseconds") >= 0.0);
    assert!(
        text.contains("weir_api_requests_total{operation=\"PutRecord\",outcome=\"ok\"} 3"),
        "{text}"
    );
    // The embedded store's health gauges are there before any fault.
    let gauge = |name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.split(' ').next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    assert_eq!(gauge("weir_store_failed_shards"), Some(0.0), "{text}");
    assert!(gauge("weir_store_free_bytes").is_some_and(|b| b > 0.0), "{text}");
}

#[tokio::test]
async fn sigterm_stops_promptly_with_idle_keep_alive_connections_open() {
    let (mut c, addr) = start(&[]);
    // A pooled client keeps its connection open after the answer.
    let client = kinesis_support::sdk(addr);
    client.create_stream().stream_name("bye").shard_count(1).send().await.expect("create");
    client.list_streams().send().await.expect("list");
    c.signal("TERM");
    // Well inside the listener's 10 s grace: idle connections do not hold it.
    let status = c.wait_exit(std::time::Duration::from_secs(5));
    assert!(status.is_some_and(|s| s.success()), "{}", c.report());
    drop(client);
}
