//! Arbitrary bytes to the batch decoders: never a panic; `BatchView::decode`
//! accepting means every record it iterates is `Ok` (its documented
//! promise) and `OwnedBatch::decode` agrees; an owned batch encodes back to
//! bytes that decode to the same batch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::batch::{BatchView, OwnedBatch};

fuzz_target!(|data: &[u8]| {
    let view = BatchView::decode(data);
    if let Ok(view) = &view {
        assert!(view.records().all(|r| r.is_ok()), "a checked batch yields a bad record");
        assert_eq!(view.records().count(), view.len());
    }
    let owned = OwnedBatch::decode(data);
    assert_eq!(view.is_ok(), owned.is_ok(), "the view and the owned decoder disagree");
    if let Ok(batch) = owned {
        let bytes = batch.encode_to_vec().expect("a decoded batch encodes");
        assert_eq!(OwnedBatch::decode(&bytes).expect("its encoding decodes"), batch);
    }
});
