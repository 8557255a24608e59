//! Arbitrary bytes to the serial-link frame decoder: never a panic; a frame
//! that decodes encodes back to a frame that decodes the same; and the
//! streaming `FrameDecoder` fed the same bytes never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir_wire::frame::{FrameDecoder, decode_frame, encode_frame, max_encoded_frame_len};

fuzz_target!(|data: &[u8]| {
    let mut copy = data.to_vec();
    if let Ok(frame) = decode_frame(&mut copy) {
        let mut out = vec![0u8; max_encoded_frame_len(frame.payload.len())];
        let n = encode_frame(frame.kind, frame.seq, frame.payload, &mut out)
            .expect("a decoded frame encodes");
        // Without its 0x00 delimiter.
        let again = decode_frame(&mut out[..n - 1]).expect("its encoding decodes");
        assert_eq!((again.kind, again.seq, again.payload), (frame.kind, frame.seq, frame.payload));
    }
    let mut decoder = FrameDecoder::<512>::new();
    for &byte in data {
        let _ = decoder.push(byte);
    }
});
