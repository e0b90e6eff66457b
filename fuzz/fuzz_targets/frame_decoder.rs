//! Feeds arbitrary bytes through the frame reassembly that sits behind every QUIC stream.
//!
//! The first byte picks where the rest is split into two chunks, so reassembly across a chunk
//! boundary is exercised, not only whole buffers. Payloads are decoded as the messages agents
//! send to control ([`AgentToControl`]); the whole input also goes through
//! [`frame::decode_all`] as the messages control sends to agents. Any panic is a bug.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren_api::{AgentToControl, ControlToAgent};
use warren_transport::frame::{self, FrameDecoder};

/// Small enough that the fuzzer reaches the over-limit branch with a 4-byte prefix it can
/// guess, large enough for real messages.
const MAX_FRAME_BYTES: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split_byte, rest)) = data.split_first() else {
        return;
    };
    let split_at = usize::from(split_byte).min(rest.len());
    let (first, second) = rest.split_at(split_at);

    let mut decoder = FrameDecoder::new(MAX_FRAME_BYTES);
    'chunks: for chunk in [first, second] {
        decoder.push(chunk);
        loop {
            match decoder.next_message::<AgentToControl>() {
                Ok(Some(_message)) => {}
                Ok(None) => break,
                // A bad frame ends the stream for real peers too: stop feeding this one.
                Err(_) => break 'chunks,
            }
        }
    }
    let _ = decoder.is_mid_frame();
    let _ = decoder.finish();

    let _ = frame::decode_all::<ControlToAgent>(rest, MAX_FRAME_BYTES);
});
