//! Writes the seed corpora of the fuzz targets (`fuzz/corpus/<target>/`):
//! valid records, batches, envelopes and frames like the tests and devices
//! send, so the fuzzer starts from inputs that get past the first checks.
//!
//! ```text
//! cargo run -p weir-wire --example fuzz_seeds
//! ```

use std::path::Path;

use weir_wire::{
    FrameKind, OwnedBatch, OwnedRecord, Record, encode_batch_to_vec, encode_frame,
    encode_record_to_vec, max_encoded_frame_len,
};

fn write(target: &str, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(name), bytes)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let records = [
        Record::new("sensor-1", b"{\"t\":21.5}"),
        Record::new("k", b""),
        Record { explicit_hash_key: Some(u128::MAX), ..Record::new("gateway/eth0", &[0xff; 64]) },
    ];
    let mut envelopes = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let mut out = vec![0u8; r.encoded_len()];
        let n = r.encode(&mut out)?;
        write("wire_record", &format!("record-{i}"), &out[..n])?;
        let env = encode_record_to_vec(r)?;
        write("wire_envelope", &format!("record-{i}"), &env)?;
        envelopes.push(env);
    }
    for (i, count) in [1usize, 3, 100].into_iter().enumerate() {
        let batch = OwnedBatch {
            producer_id: format!("device-{i}"),
            batch_seq: i as u64 * 1_000,
            records: (0..count)
                .map(|n| OwnedRecord::new(format!("k{}", n % 7), format!("reading {n}")))
                .collect(),
        };
        write("wire_batch", &format!("batch-{count}"), &batch.encode_to_vec()?)?;
        let env = encode_batch_to_vec(&batch)?;
        write("wire_envelope", &format!("batch-{count}"), &env)?;
        envelopes.push(env);
    }
    for (i, env) in envelopes.iter().enumerate() {
        let mut out = vec![0u8; max_encoded_frame_len(env.len())];
        let n = encode_frame(FrameKind::Data, i as u32, env, &mut out)?;
        write("wire_frame", &format!("data-{i}"), &out[..n - 1])?;
    }
    let mut out = vec![0u8; max_encoded_frame_len(0)];
    let n = encode_frame(FrameKind::Ack, 7, &[], &mut out)?;
    write("wire_frame", "ack", &out[..n - 1])?;
    Ok(())
}
