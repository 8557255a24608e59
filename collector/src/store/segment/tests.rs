use super::*;

fn rec(key: &str, data: &[u8]) -> RecordIn {
    RecordIn {
        partition_key: key.into(),
        data: Bytes::copy_from_slice(data),
        explicit_hash_key: None,
        producer_timestamp_ms: None,
    }
}

#[test]
fn batch_round_trips_with_optional_fields() {
    let mut a = rec("k1", b"hello");
    a.explicit_hash_key = Some(u128::MAX - 7);
    let mut b = rec("ключ", b"");
    b.producer_timestamp_ms = Some(42);
    let mut buf = Vec::new();
    encode_batch(&mut buf, 100, 1_700_000_000_000, &[&a, &b]);
    let (h, out) = decode_batch(Bytes::from(buf), 0, usize::MAX).expect("decode");
    assert_eq!(h.base_offset, 100);
    assert_eq!(h.record_count, 2);
    assert_eq!(out.len(), 2);
    assert_eq!(out[0].offset, 100);
    assert_eq!(out[0].explicit_hash_key, Some(u128::MAX - 7));
    assert_eq!(&out[0].data[..], b"hello");
    assert_eq!(out[1].partition_key, "ключ");
    assert_eq!(out[1].producer_timestamp_ms, Some(42));
    assert_eq!(out[1].arrival_ms, 1_700_000_000_000);
}

#[test]
fn decode_skips_and_limits() {
    let recs: Vec<RecordIn> = (0..5).map(|i| rec("k", &[i])).collect();
    let refs: Vec<&RecordIn> = recs.iter().collect();
    let mut buf = Vec::new();
    encode_batch(&mut buf, 10, 0, &refs);
    let (_, out) = decode_batch(Bytes::from(buf), 12, 2).expect("decode");
    assert_eq!(out.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![12, 13]);
}

#[test]
fn producer_tags_round_trip_and_are_invisible_to_readers() {
    let recs: Vec<RecordIn> = (0..4).map(|i| rec("k", &[i])).collect();
    let refs: Vec<&RecordIn> = recs.iter().collect();
    let a = ProducerTag { producer_id: "dev-1", batch_seq: 9 };
    let b = ProducerTag { producer_id: "gw", batch_seq: u64::MAX };
    let mut buf = Vec::new();
    encode_tagged_batch(&mut buf, 0, 1, &refs, &[(0, a), (2, b)]);
    let mut tags = Vec::new();
    let (_, out) = decode_batch_with_tags(Bytes::from(buf), 0, usize::MAX, |id, seq| {
        tags.push((id.to_owned(), seq));
    })
    .expect("decode");
    assert_eq!(tags, vec![("dev-1".to_owned(), 9), ("gw".to_owned(), u64::MAX)]);
    assert_eq!(out.iter().map(|r| r.data[0]).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
}

#[test]
fn every_single_flipped_byte_is_detected() {
    let mut buf = Vec::new();
    encode_batch(&mut buf, 0, 5, &[&rec("key", b"some data")]);
    for i in 0..buf.len() {
        let mut bad = buf.clone();
        bad[i] ^= 0x40;
        assert!(decode_batch(Bytes::from(bad), 0, usize::MAX).is_err(), "byte {i}");
    }
}
