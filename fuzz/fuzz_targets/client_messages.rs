//! Everything a client can send, decoded the way pgward decodes it: startup packets
//! first, then whole frontend messages and the parsers for the ones the proxy reads.
//! The property: no input panics, and framing never consumes more than it was given.
//!
//! Run: cargo fuzz run client_messages   (from the repository root; needs cargo-fuzz)
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgward_wire::{frontend, startup};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // The startup phase: up to three packets (SSLRequest, GSSENCRequest, StartupMessage).
    for _ in 0..3 {
        match startup::decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => break,
        }
    }
    let framer = frontend::Framer::new(1 << 20);
    let mut offset = 0;
    while let Ok(Some(msg)) = framer.peek(&buf[offset..]) {
        assert!(msg.total_len <= buf.len() - offset);
        let _ = match msg.tag {
            b'Q' => frontend::query_text(msg.body).map(|_| ()),
            b'P' => frontend::parse_message(msg.body).map(|_| ()),
            b'B' => frontend::bind_names(msg.body).map(|_| ()),
            b'E' => frontend::execute_portal(msg.body).map(|_| ()),
            b'D' | b'C' => frontend::target(msg.body, "target").map(|_| ()),
            _ => Ok(()),
        };
        offset += msg.total_len;
    }
});
