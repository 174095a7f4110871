//! Feeds arbitrary bytes to every frame decoder: the length check, version, kind, tag and
//! postcard decoding of commands, replies, announcements and acknowledgements. Nothing may panic.
#![no_main]

use lazarus_proto::frame::{read_frame, seal_hello, AnnounceOpener, CommandOpener, CommandSealer};
use lazarus_proto::{BootId, ClusterKey, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_bytes([0x42; 32]);
    let boot = BootId([1; 16]);
    let mut cursor = data;
    while let Ok(frame) = read_frame(&mut cursor) {
        let _ = CommandOpener::new(key.clone(), boot).open(&frame);
        let _ = AnnounceOpener::default().open(&key, &frame);
        if let Ok((_, wait)) = CommandSealer::new(key.clone(), boot, 1).seal(&Request::GetStatus) {
            let _ = wait.open_reply(&key, &frame);
            let _ = wait.open_ack(&key, &frame);
        }
        if let Ok((_, wait)) = seal_hello(&key, 7) {
            let _ = wait.open_reply(&key, &frame);
        }
    }
    // The payload decoders on their own, past the tag check a fuzzer cannot forge.
    let _ = postcard::from_bytes::<lazarus_proto::frame::Envelope<Request>>(data);
    let _ = postcard::from_bytes::<lazarus_proto::frame::Envelope<lazarus_proto::Response>>(data);
});
