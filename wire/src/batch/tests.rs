//! Tests of the batch encoding: encoder, view and owned batch.

use super::*;

fn rec(key: &str) -> Record<'_> {
    Record::new(key, key.as_bytes())
}

#[test]
fn layout_is_documented_bytes() {
    let mut buf = [0u8; 64];
    let mut enc = BatchEncoder::new(&mut buf, "d1", 300).expect("new");
    enc.push(&Record::new("k", b"v")).expect("push");
    let bytes = enc.finish().expect("finish");
    assert_eq!(bytes, [2, b'd', b'1', 0xAC, 0x02, 1, 0, 1, b'k', 1, b'v', 0, 0]);
}

#[test]
fn round_trip_through_view() {
    let keys = ["a", "bb", "ccc"];
    let mut buf = [0u8; 256];
    let mut enc = BatchEncoder::new(&mut buf, "device-42", 7).expect("new");
    for k in keys {
        enc.push(&rec(k)).expect("push");
    }
    assert_eq!(enc.len(), 3);
    let bytes = enc.finish().expect("finish");
    let view = BatchView::decode(bytes).expect("decode");
    assert_eq!(view.producer_id(), "device-42");
    assert_eq!(view.batch_seq(), 7);
    assert_eq!(view.len(), 3);
    let got: Vec<_> = view.records().map(|r| r.expect("record")).collect();
    assert_eq!(got, keys.map(rec));
    assert_eq!(view.as_bytes(), bytes);
}

#[test]
fn buffer_full_leaves_a_valid_encoder() {
    let mut buf = [0u8; 40];
    let mut enc = BatchEncoder::new(&mut buf, "dev", 1).expect("new");
    let mut pushed = 0;
    let err = loop {
        match enc.push(&Record::new("key", b"0123456789")) {
            Ok(()) => pushed += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(err, EncodeError::BufferFull);
    assert!(err.is_batch_full());
    assert_eq!(enc.len(), pushed);
    // A smaller record still fits in the room left.
    enc.push(&Record::new("k", b"")).expect("small record fits");
    let bytes = enc.finish().expect("finish");
    let view = BatchView::decode(bytes).expect("decode");
    assert_eq!(view.len(), pushed + 1);
    for (i, r) in view.records().enumerate() {
        let r = r.expect("record");
        if i < pushed {
            assert_eq!(r, Record::new("key", b"0123456789"));
        } else {
            assert_eq!(r, Record::new("k", b""));
        }
    }
}

#[test]
fn encoder_refuses_bad_input() {
    let mut buf = [0u8; 128];
    assert_eq!(
        BatchEncoder::new(&mut buf, "", 0).err(),
        Some(EncodeError::InvalidProducerId { bytes: 0 })
    );
    let long = "x".repeat(MAX_PRODUCER_ID_BYTES + 1);
    assert_eq!(
        BatchEncoder::new(&mut buf, &long, 0).err(),
        Some(EncodeError::InvalidProducerId { bytes: 65 })
    );
    let max = "x".repeat(MAX_PRODUCER_ID_BYTES);
    assert!(BatchEncoder::new(&mut buf, &max, u64::MAX).is_ok());
    assert_eq!(BatchEncoder::new(&mut buf[..3], "dev", 0).err(), Some(EncodeError::BufferFull));

    let mut enc = BatchEncoder::new(&mut buf, "dev", 0).expect("new");
    assert_eq!(
        enc.push(&rec("")),
        Err(EncodeError::Validation(ValidationError::EmptyPartitionKey))
    );
    assert!(enc.is_empty());
    assert_eq!(enc.finish(), Err(EncodeError::Validation(ValidationError::EmptyBatch)));
}

#[test]
fn record_501_is_refused() {
    let mut buf = vec![0u8; 8 * 1024];
    let mut enc = BatchEncoder::new(&mut buf, "dev", 0).expect("new");
    for _ in 0..MAX_BATCH_RECORDS {
        enc.push(&rec("k")).expect("push");
    }
    let err = enc.push(&rec("k")).expect_err("501st");
    assert_eq!(err, EncodeError::Validation(ValidationError::TooManyRecords { records: 501 }));
    assert!(err.is_batch_full());
    let bytes = enc.finish().expect("finish");
    assert_eq!(BatchView::decode(bytes).expect("decode").len(), MAX_BATCH_RECORDS);
}

#[test]
fn batch_over_five_mebibytes_is_refused() {
    let data = vec![1u8; crate::MAX_DATA_BYTES];
    let mut buf = vec![0u8; 7 * 1024 * 1024];
    let mut enc = BatchEncoder::new(&mut buf, "dev", 0).expect("new");
    for _ in 0..4 {
        enc.push(&Record::new("k", &data)).expect("push");
    }
    let err = enc.push(&Record::new("k", &data)).expect_err("too large");
    assert!(matches!(err, EncodeError::Validation(ValidationError::BatchTooLarge { .. })));
    assert!(err.is_batch_full());
    assert_eq!(enc.len(), 4);
    // The vector path gives the same answer without allocating 5+ MiB.
    let owned = OwnedBatch {
        producer_id: "dev".into(),
        batch_seq: 0,
        records: (0..5).map(|_| OwnedRecord::new("k", data.clone())).collect(),
    };
    assert!(matches!(
        owned.encode_to_vec(),
        Err(EncodeError::Validation(ValidationError::BatchTooLarge { .. }))
    ));
    // And a reader refuses such bytes before looking at them.
    let big = vec![0u8; MAX_BATCH_BYTES + 1];
    assert_eq!(
        BatchView::decode(&big),
        Err(DecodeError::InvalidBatch(ValidationError::BatchTooLarge {
            bytes: MAX_BATCH_BYTES + 1
        }))
    );
}

fn encoded(keys: &[&str]) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let mut enc = BatchEncoder::new(&mut buf, "dev", 9).expect("new");
    for k in keys {
        enc.push(&rec(k)).expect("push");
    }
    enc.finish().expect("finish").to_vec()
}

#[test]
fn decode_errors() {
    let good = encoded(&["a", "b"]);
    // Header: [3 d e v][9][2 0]; records start at 7 and are 6 bytes each.
    assert_eq!(&good[..7], [3, b'd', b'e', b'v', 9, 2, 0]);

    let mut more = good.clone();
    more[5] = 3;
    assert_eq!(
        BatchView::decode(&more),
        Err(DecodeError::MissingRecords { declared: 3, found: 2 })
    );
    let mut fewer = good.clone();
    fewer[5] = 1;
    assert_eq!(BatchView::decode(&fewer), Err(DecodeError::TrailingBytes { offset: 13, count: 6 }));
    assert_eq!(
        BatchView::decode(&good[..good.len() - 1]),
        Err(DecodeError::Truncated { offset: 13 })
    );
    assert_eq!(BatchView::decode(&good[..6]), Err(DecodeError::Truncated { offset: 5 }));
    assert_eq!(BatchView::decode(&[]), Err(DecodeError::Truncated { offset: 0 }));

    let mut zero = good.clone();
    zero[5] = 0;
    assert_eq!(
        BatchView::decode(&zero),
        Err(DecodeError::InvalidBatch(ValidationError::EmptyBatch))
    );
    let mut many = good.clone();
    many[5..7].copy_from_slice(&501u16.to_le_bytes());
    assert_eq!(
        BatchView::decode(&many),
        Err(DecodeError::InvalidBatch(ValidationError::TooManyRecords { records: 501 }))
    );

    let mut bad_utf8 = good.clone();
    bad_utf8[14] = 0xFF; // second record's key byte
    assert_eq!(
        BatchView::decode(&bad_utf8),
        Err(DecodeError::Malformed { offset: 13, error: postcard::Error::DeserializeBadUtf8 })
    );

    let mut bad_id = good.clone();
    bad_id[0] = 0;
    assert_eq!(BatchView::decode(&bad_id), Err(DecodeError::InvalidProducerId { bytes: 0 }));
}

#[test]
fn invalid_record_names_its_index() {
    // Second record with an empty key and a 3-byte body: [0][1 x][0][0].
    let mut bytes = vec![3, b'd', b'e', b'v', 9, 2, 0, 1, b'a', 1, b'a', 0, 0];
    bytes.extend_from_slice(&[0, 1, b'x', 0, 0]);
    assert_eq!(
        BatchView::decode(&bytes),
        Err(DecodeError::InvalidRecord { index: 1, error: ValidationError::EmptyPartitionKey })
    );
    // parse_header accepts it; the iterator yields the first record, the
    // error, then stops.
    let view = BatchView::parse_header(&bytes).expect("header");
    let mut it = view.records();
    assert!(matches!(it.next(), Some(Ok(_))));
    assert!(matches!(it.next(), Some(Err(DecodeError::InvalidRecord { index: 1, .. }))));
    assert!(it.next().is_none());
}

#[test]
fn owned_batch_round_trip() {
    let batch = OwnedBatch {
        producer_id: "gw-1".into(),
        batch_seq: u64::MAX,
        records: vec![
            OwnedRecord::new("a", vec![0u8; 300]),
            OwnedRecord {
                partition_key: "é".repeat(256),
                data: vec![],
                explicit_hash_key: Some(u128::MAX),
                producer_timestamp_ms: Some(u64::MAX),
            },
        ],
    };
    let bytes = batch.encode_to_vec().expect("encode");
    assert_eq!(OwnedBatch::decode(&bytes).expect("decode"), batch);
    let empty = OwnedBatch { producer_id: "gw-1".into(), ..OwnedBatch::default() };
    assert_eq!(empty.encode_to_vec(), Err(EncodeError::Validation(ValidationError::EmptyBatch)));
}
