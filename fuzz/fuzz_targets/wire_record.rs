//! Arbitrary bytes to `Record::decode`: never a panic, and a record that
//! decodes encodes back to bytes that decode to the same record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::record::Record;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = Record::decode(data) {
        let mut out = vec![0u8; record.encoded_len()];
        let n = record.encode(&mut out).expect("a decoded record encodes");
        assert_eq!(Record::decode(&out[..n]).expect("its encoding decodes"), record);
    }
});
