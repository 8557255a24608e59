//! Property tests for the wire format: decoding arbitrary or damaged bytes
//! never panics, and every valid value survives encode → decode unchanged.
//!
//! Damaged inputs start from valid encodings and get a few random mutations
//! (a bit flipped, a byte inserted or deleted, the tail cut), which reach far
//! deeper into the decoders than random bytes alone.
#![cfg(feature = "alloc")]

use proptest::prelude::*;
use proptest::sample::Index;
use weir_wire::{
    BatchEncoder, BatchView, Envelope, FeedResult, FrameDecoder, FrameKind, MAX_FRAME_PAYLOAD,
    MaxFrameDecoder, OwnedBatch, OwnedRecord, Record, batch_encoder, decode_frame,
    encode_batch_to_vec, encode_frame, encode_record_to_vec, max_encoded_frame_len,
};

// ---------------------------------------------------------------- strategies

/// A valid partition key: 1 to 256 arbitrary characters, mostly short.
fn partition_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(any::<char>(), 1..=16),
        1 => prop::collection::vec(any::<char>(), 1..=256),
    ]
    .prop_map(String::from_iter)
}

fn owned_record() -> impl Strategy<Value = OwnedRecord> {
    (
        partition_key(),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<Option<u128>>(),
        any::<Option<u64>>(),
    )
        .prop_map(|(partition_key, data, explicit_hash_key, producer_timestamp_ms)| {
            OwnedRecord { partition_key, data, explicit_hash_key, producer_timestamp_ms }
        })
}

fn owned_batch() -> impl Strategy<Value = OwnedBatch> {
    ("[a-zA-Z0-9:_-]{1,64}", any::<u64>(), prop::collection::vec(owned_record(), 1..12)).prop_map(
        |(producer_id, batch_seq, records)| OwnedBatch { producer_id, batch_seq, records },
    )
}

/// One way of damaging a byte string.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        2 => any::<Index>().prop_map(Mutation::Delete),
        1 => any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            Mutation::Flip(i, bit) if !bytes.is_empty() => {
                let i = i.index(bytes.len());
                bytes[i] ^= 1 << bit;
            }
            Mutation::Insert(i, b) => {
                let i = i.index(bytes.len() + 1);
                bytes.insert(i, *b);
            }
            Mutation::Delete(i) if !bytes.is_empty() => {
                let i = i.index(bytes.len());
                bytes.remove(i);
            }
            Mutation::Truncate(i) => {
                let len = i.index(bytes.len() + 1);
                bytes.truncate(len);
            }
            Mutation::Flip(..) | Mutation::Delete(_) => {}
        }
    }
    bytes
}

// ------------------------------------------------------------------- helpers

/// Runs every payload decoder on `bytes`; checks the promises they make about
/// each other when they succeed.
fn decode_everything(bytes: &[u8]) {
    if let Ok(Envelope::Batch(view)) = Envelope::decode(bytes) {
        assert_eq!(view.records().filter(Result::is_ok).count(), view.len());
    }
    if let Ok(view) = BatchView::decode(bytes) {
        // Promise: after a successful decode the iterator cannot fail.
        let records: Vec<_> = view.records().collect();
        assert_eq!(records.len(), view.len());
        assert!(records.iter().all(Result::is_ok));
        let owned = OwnedBatch::decode(bytes).expect("decodes like the view");
        assert_eq!(owned.records.len(), view.len());
    } else {
        assert!(OwnedBatch::decode(bytes).is_err());
    }
    if let Ok(view) = BatchView::parse_header(bytes) {
        // The lazy iterator ends, after at most one error.
        let items: Vec<_> = view.records().collect();
        assert!(items.len() <= view.len() + 1);
        assert!(items.iter().filter(|r| r.is_err()).count() <= 1);
    }
    if let Ok(record) = Record::decode(bytes) {
        assert!(record.validate().is_ok());
    }
}

/// A decoded frame's parts, owned, or why it was refused.
type OwnedFrame = Result<(FrameKind, u32, Vec<u8>), weir_wire::FrameError>;

/// Feeds `stream` to a decoder and returns each frame or error it reports.
fn frames<const N: usize>(decoder: &mut FrameDecoder<N>, mut stream: &[u8]) -> Vec<OwnedFrame> {
    let mut out = Vec::new();
    loop {
        match decoder.feed(stream) {
            FeedResult::Consumed => return out,
            FeedResult::Frame { frame, remaining } => {
                out.push(Ok((frame.kind, frame.seq, frame.payload.to_vec())));
                stream = remaining;
            }
            FeedResult::Error { error, remaining } => {
                out.push(Err(error));
                stream = remaining;
            }
        }
    }
}

fn encode_data_frame(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; max_encoded_frame_len(payload.len())];
    let len = encode_frame(FrameKind::Data, seq, payload, &mut out).expect("encode frame");
    out.truncate(len);
    out
}

// -------------------------------------------------------- never panics

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
        frames(&mut FrameDecoder::<64>::new(), &bytes);
        frames(&mut MaxFrameDecoder::new(), &bytes);
        let mut copy = bytes.clone();
        let _ = decode_frame(&mut copy);
    }

    #[test]
    fn random_bytes_after_an_envelope_header_never_panic(
        kind in 0u8..4,
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut envelope = vec![weir_wire::FORMAT_VERSION, kind];
        envelope.extend_from_slice(&bytes);
        decode_everything(&envelope);
    }

    #[test]
    fn damaged_batch_envelopes_never_panic(
        batch in owned_batch(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let envelope = encode_batch_to_vec(&batch).expect("encode");
        let damaged = mutate(envelope, &mutations);
        decode_everything(&damaged);
        // The batch alone, without the envelope header.
        decode_everything(damaged.get(2..).unwrap_or_default());
    }

    #[test]
    fn damaged_record_envelopes_never_panic(
        record in owned_record(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let envelope = encode_record_to_vec(&record.as_record()).expect("encode");
        let damaged = mutate(envelope, &mutations);
        decode_everything(&damaged);
        decode_everything(damaged.get(2..).unwrap_or_default());
    }

    #[test]
    fn damaged_frames_never_panic_and_the_next_frame_survives(
        payload in prop::collection::vec(any::<u8>(), 0..600),
        seq in any::<u32>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let damaged = mutate(encode_data_frame(seq, &payload), &mutations);
        let mut copy = damaged.clone();
        let _ = decode_frame(&mut copy);

        // Whatever the damage, a delimiter then an intact frame puts the
        // decoder back in step.
        let intact = encode_data_frame(seq.wrapping_add(1), b"intact");
        let stream = [&damaged[..], &[0][..], &intact[..]].concat();
        for got in [
            frames(&mut MaxFrameDecoder::new(), &stream),
            frames(&mut FrameDecoder::<32>::new(), &stream),
        ] {
            prop_assert_eq!(
                got.last().cloned(),
                Some(Ok((FrameKind::Data, seq.wrapping_add(1), b"intact".to_vec())))
            );
        }
    }
}

// --------------------------------------------------------------- round trips

proptest! {
    #[test]
    fn record_round_trip(record in owned_record()) {
        let view = record.as_record();
        let mut buf = vec![0u8; view.encoded_len()];
        prop_assert_eq!(view.encode(&mut buf), Ok(view.encoded_len()));
        prop_assert_eq!(Record::decode(&buf), Ok(view));

        let envelope = encode_record_to_vec(&view).expect("encode");
        prop_assert_eq!(Envelope::decode(&envelope), Ok(Envelope::Record(view)));
        prop_assert_eq!(OwnedRecord::from(Record::decode(&envelope[2..]).expect("decode")), record);
    }

    #[test]
    fn batch_round_trip(batch in owned_batch()) {
        let bytes = batch.encode_to_vec().expect("encode");
        prop_assert_eq!(OwnedBatch::decode(&bytes).expect("decode"), batch.clone());

        // The allocation-free encoder writes the very same bytes.
        let mut buf = vec![0u8; bytes.len()];
        let mut encoder = BatchEncoder::new(&mut buf, &batch.producer_id, batch.batch_seq)
            .expect("start");
        for record in &batch.records {
            encoder.push(&record.as_record()).expect("push");
        }
        prop_assert_eq!(encoder.finish().expect("finish"), &bytes[..]);

        // And as an envelope, built in place or in a vector.
        let envelope = encode_batch_to_vec(&batch).expect("envelope");
        let mut buf = vec![0u8; envelope.len()];
        let mut encoder = batch_encoder(&mut buf, &batch.producer_id, batch.batch_seq)
            .expect("start");
        for record in &batch.records {
            encoder.push(&record.as_record()).expect("push");
        }
        prop_assert_eq!(encoder.finish().expect("finish"), &envelope[..]);
        let Ok(Envelope::Batch(view)) = Envelope::decode(&envelope) else {
            panic!("expected a batch envelope");
        };
        prop_assert_eq!(view.producer_id(), batch.producer_id.as_str());
        prop_assert_eq!(view.batch_seq(), batch.batch_seq);
        let records: Vec<OwnedRecord> =
            view.records().map(|r| OwnedRecord::from(r.expect("record"))).collect();
        prop_assert_eq!(records, batch.records);
    }

    #[test]
    fn frame_round_trip(
        payloads in prop::collection::vec(
            (any::<u32>(), prop::collection::vec(any::<u8>(), 0..=MAX_FRAME_PAYLOAD / 4)),
            1..4,
        ),
    ) {
        let mut stream = Vec::new();
        for (seq, payload) in &payloads {
            let line = encode_data_frame(*seq, payload);
            prop_assert!(line.len() <= max_encoded_frame_len(payload.len()));
            prop_assert!(!line[..line.len() - 1].contains(&0));
            stream.extend_from_slice(&line);
        }
        let expected: Vec<_> =
            payloads.into_iter().map(|(seq, payload)| Ok((FrameKind::Data, seq, payload))).collect();
        prop_assert_eq!(frames(&mut MaxFrameDecoder::new(), &stream), expected.clone());

        // Byte by byte through `push` gives the same frames.
        let mut decoder = MaxFrameDecoder::new();
        let mut got = Vec::new();
        for &byte in &stream {
            if let Some(result) = decoder.push(byte) {
                got.push(result.map(|f| (f.kind, f.seq, f.payload.to_vec())));
            }
        }
        prop_assert_eq!(got, expected);
    }
}
