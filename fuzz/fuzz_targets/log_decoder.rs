//! Feed arbitrary bytes to the log frame decoder, whole and split: it must return
//! frames or typed errors, never panic, and never allocate beyond its limit.
#![no_main]

use ft_core::log_codec::{decode_frame, FrameDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode_frame(data);
    let split = data.first().map_or(1, |b| usize::from(*b) % 17 + 1);
    let mut d = FrameDecoder::with_max_payload(1 << 16);
    for chunk in data.chunks(split) {
        d.push(chunk);
        while let Ok(Some(_)) = d.next_frame() {}
    }
    let _ = d.finish();
});
