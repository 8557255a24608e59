//! Arbitrary bytes to `Envelope::decode` (what the collector's MQTT ingest
//! and the agent's serial input read first): never a panic, and a decoded
//! envelope encodes back to bytes that decode to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::envelope::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        let bytes = envelope.encode_to_vec().expect("a decoded envelope encodes");
        assert_eq!(Envelope::decode(&bytes).expect("its encoding decodes"), envelope);
    }
});
