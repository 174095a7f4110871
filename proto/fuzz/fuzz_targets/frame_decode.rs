//! Feeds arbitrary bytes to every frame decoder: the length check, version, kind, signature, tag
//! and postcard decoding of commands, replies, announcements and acknowledgements. Nothing may
//! panic.
#![no_main]

use lazarus_proto::frame::{read_frame, seal_hello, AnnounceOpener, CommandOpener, CommandSealer};
use lazarus_proto::{AgentKey, BootId, SigningKey, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let key = AgentKey::from_bytes([0x42; 32]);
    let signer = SigningKey::from_seed([0x43; 32]);
    let boot = BootId([1; 16]);
    let mut cursor = data;
    while let Ok(frame) = read_frame(&mut cursor) {
        let mut agent = CommandOpener::new(signer.public(), boot);
        let _ = agent.open(&frame);
        let hello = agent.begin(9);
        let _ = agent.open(&frame);
        let _ = frame.peek_announce();
        let _ = AnnounceOpener::default().open("n", &key, &frame);
        if let Ok((_, wait)) = CommandSealer::new(signer.clone(), &hello).seal(&Request::GetStatus) {
            let _ = wait.open_reply(&key, &frame);
            let _ = wait.open_ack(&signer.public(), &frame);
        }
        if let Ok((_, wait)) = seal_hello(&signer, 7) {
            let _ = wait.open_reply(&key, &frame);
        }
    }
    // The payload decoders on their own, past the checks a fuzzer cannot forge.
    let _ = postcard::from_bytes::<lazarus_proto::frame::Envelope<Request>>(data);
    let _ = postcard::from_bytes::<lazarus_proto::frame::Envelope<lazarus_proto::Response>>(data);
});
