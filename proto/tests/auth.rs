//! Every rejection the protocol promises, each with its own error, plus the happy paths.

use lazarus_proto::frame::{
    read_frame, seal_announce, seal_hello, version_reject, AnnounceOpener, CommandOpener,
    CommandSealer, RawFrame, TAG_LEN,
};
use lazarus_proto::*;

fn key(n: u8) -> ClusterKey {
    ClusterKey::from_bytes([n; 32])
}

const BOOT: BootId = BootId([7; 16]);

fn status() -> Response {
    Response::Status(Status {
        boot_id: BOOT,
        phase: Phase::Ready,
        step: None,
        bytes_done: 0,
        bytes_total: 0,
        flag: FlagSummary {
            state: flag::FlagState::None,
            seq: 0,
            plan_id: String::new(),
            error_code: 0,
            bytes_done: 0,
            timestamp: 0,
        },
        plan_id: None,
        error: None,
        found_at_boot: None,
    })
}

fn frame(bytes: &[u8]) -> RawFrame {
    read_frame(&mut &bytes[..]).expect("well-formed frame")
}

#[test]
fn command_and_reply_round_trip() {
    let mut client = CommandSealer::new(key(1), BOOT, 1);
    let mut agent = CommandOpener::new(key(1), BOOT);
    let (bytes, wait) = client.seal(&Request::GetStatus).unwrap();
    let (request, reply_to) = agent.open(&frame(&bytes)).unwrap();
    assert_eq!(request, Request::GetStatus);
    let reply = reply_to.seal_reply(&key(1), &status()).unwrap();
    assert_eq!(wait.open_reply(&key(1), &frame(&reply)).unwrap(), status());
    assert_eq!(agent.next_counter(), 2);
}

#[test]
fn wrong_key_is_rejected_as_bad_tag() {
    let mut client = CommandSealer::new(key(2), BOOT, 1);
    let mut agent = CommandOpener::new(key(1), BOOT);
    let (bytes, _) = client.seal(&Request::Abort).unwrap();
    assert!(matches!(agent.open(&frame(&bytes)), Err(WireError::BadTag)));
}

#[test]
fn every_flipped_bit_is_rejected() {
    let mut client = CommandSealer::new(key(1), BOOT, 1);
    let (bytes, _) = client.seal(&Request::GetLogs { since: 3 }).unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let mut agent = CommandOpener::new(key(1), BOOT);
        let result = read_frame(&mut &bad[..]).and_then(|f| agent.open(&f));
        let err = result.expect_err(&format!("bit {bit} flipped was accepted"));
        let byte = bit / 8;
        match byte {
            // The length prefix: the frame is cut short, runs past the end, or exceeds the limit.
            0..=3 => assert!(
                matches!(
                    err,
                    WireError::Short { .. }
                        | WireError::Oversized { .. }
                        | WireError::Runt { .. }
                        | WireError::BadTag
                ),
                "bit {bit}: {err}"
            ),
            4 => assert!(
                matches!(err, WireError::UnknownVersion { .. }),
                "bit {bit}: {err}"
            ),
            5 => assert!(
                matches!(
                    err,
                    WireError::UnexpectedKind { .. } | WireError::PeerRejectedVersion { .. }
                ),
                "bit {bit}: {err}"
            ),
            _ => assert!(matches!(err, WireError::BadTag), "bit {bit}: {err}"),
        }
    }
}

#[test]
fn replayed_request_is_rejected() {
    let mut client = CommandSealer::new(key(1), BOOT, 1);
    let mut agent = CommandOpener::new(key(1), BOOT);
    let (first, _) = client.seal(&Request::GetStatus).unwrap();
    let (second, _) = client.seal(&Request::Reboot).unwrap();
    agent.open(&frame(&first)).unwrap();
    agent.open(&frame(&second)).unwrap();
    for old in [&first, &second] {
        match agent.open(&frame(old)) {
            Err(WireError::Replay { last: 2, .. }) => {}
            other => panic!("replay accepted or misreported: {other:?}"),
        }
    }
}

#[test]
fn request_for_another_boot_is_rejected() {
    let mut client = CommandSealer::new(key(1), BootId([8; 16]), 1);
    let mut agent = CommandOpener::new(key(1), BOOT);
    let (bytes, _) = client.seal(&Request::Reboot).unwrap();
    assert!(matches!(
        agent.open(&frame(&bytes)),
        Err(WireError::WrongBootId { expected: BOOT, .. })
    ));
}

#[test]
fn truncated_frame_is_rejected_at_every_length() {
    let mut client = CommandSealer::new(key(1), BOOT, 1);
    let (bytes, _) = client.seal(&Request::GetStatus).unwrap();
    assert!(matches!(read_frame(&mut &[][..]), Err(WireError::Closed)));
    for cut in 1..bytes.len() {
        let err = read_frame(&mut &bytes[..cut]).expect_err("truncated frame accepted");
        assert!(matches!(err, WireError::Short { .. }), "cut {cut}: {err}");
    }
}

#[test]
fn oversized_frame_is_rejected_before_it_is_read() {
    // The prefix claims 64 KiB + 1; no body follows, so reading it would fail as Short instead.
    let prefix = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
    assert!(matches!(
        read_frame(&mut &prefix[..]),
        Err(WireError::Oversized { len }) if len == MAX_FRAME_LEN + 1
    ));
    let prefix = u32::MAX.to_be_bytes();
    assert!(matches!(
        read_frame(&mut &prefix[..]),
        Err(WireError::Oversized { .. })
    ));
}

#[test]
fn oversized_message_is_refused_when_sealing() {
    let mut client = CommandSealer::new(key(1), BOOT, 1);
    let logs = Response::Logs(Logs {
        lines: vec![
            LogLine {
                seq: 0,
                time_ms: 0,
                level: 3,
                message: "x".repeat(MAX_FRAME_LEN),
            };
            1
        ],
        next: 1,
    });
    let mut agent = CommandOpener::new(key(1), BOOT);
    let (bytes, _) = client.seal(&Request::GetLogs { since: 0 }).unwrap();
    let (_, reply_to) = agent.open(&frame(&bytes)).unwrap();
    assert!(matches!(
        reply_to.seal_reply(&key(1), &logs),
        Err(WireError::Oversized { .. })
    ));
}

#[test]
fn runt_frame_is_rejected() {
    let bytes = [0, 0, 0, 5, 1, 1, 0, 0, 0];
    assert!(matches!(
        read_frame(&mut &bytes[..]),
        Err(WireError::Runt { len: 5 })
    ));
}

#[test]
fn unknown_version_is_rejected_and_a_reject_frame_names_ours() {
    let mut client = CommandSealer::new(key(1), BOOT, 1);
    let (mut bytes, _) = client.seal(&Request::GetStatus).unwrap();
    bytes[4] = 9;
    let mut agent = CommandOpener::new(key(1), BOOT);
    assert!(matches!(
        agent.open(&frame(&bytes)),
        Err(WireError::UnknownVersion { found: 9 })
    ));
    let reject = version_reject();
    let (_, wait) = client.seal(&Request::GetStatus).unwrap();
    assert!(matches!(
        wait.open_reply(&key(1), &frame(&reject)),
        Err(WireError::PeerRejectedVersion {
            supported: PROTOCOL_VERSION
        })
    ));
}

#[test]
fn authenticated_garbage_is_undecodable() {
    // A peer holding the key but sending a variant this build does not know.
    use hmac::{KeyInit, Mac};
    let mut bytes = vec![0, 0, 0, 0, PROTOCOL_VERSION, 1];
    bytes.extend_from_slice(&[7; 16]); // boot id
    bytes.push(1); // counter
    bytes.push(200); // unknown Request variant
    let len = (bytes.len() - 4 + TAG_LEN) as u32;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[1; 32]).unwrap();
    mac.update(b"LZR1I");
    mac.update(&bytes);
    let tag: [u8; 32] = mac.finalize().into_bytes().into();
    bytes.extend_from_slice(&tag);
    let mut agent = CommandOpener::new(key(1), BOOT);
    assert!(matches!(
        agent.open(&frame(&bytes)),
        Err(WireError::Undecodable(_))
    ));
}

#[test]
fn reply_is_bound_to_its_request() {
    let mut client = CommandSealer::new(key(1), BOOT, 1);
    let mut agent = CommandOpener::new(key(1), BOOT);
    let (first, wait_first) = client.seal(&Request::GetStatus).unwrap();
    let (second, wait_second) = client.seal(&Request::GetStatus).unwrap();
    let (_, reply_first) = agent.open(&frame(&first)).unwrap();
    let (_, reply_second) = agent.open(&frame(&second)).unwrap();
    let r1 = reply_first.seal_reply(&key(1), &status()).unwrap();
    let r2 = reply_second.seal_reply(&key(1), &status()).unwrap();
    assert!(matches!(
        wait_second.open_reply(&key(1), &frame(&r1)),
        Err(WireError::BadTag)
    ));
    assert!(matches!(
        wait_first.open_reply(&key(1), &frame(&r2)),
        Err(WireError::BadTag)
    ));
    // A request cannot be reflected back as a reply.
    assert!(wait_first.open_reply(&key(1), &frame(&first)).is_err());
}

#[test]
fn hello_works_before_the_boot_id_is_known_and_changes_nothing() {
    let mut agent = CommandOpener::new(key(1), BOOT);
    let (bytes, wait) = seal_hello(&key(1), 0xdead_beef).unwrap();
    let (request, reply_to) = agent.open(&frame(&bytes)).unwrap();
    assert_eq!(request, Request::Hello);
    assert_eq!(agent.next_counter(), 1);
    let hello = Response::Hello(Hello {
        boot_id: BOOT,
        next_counter: agent.next_counter(),
        agent_version: "0.1.0".into(),
    });
    let reply = reply_to.seal_reply(&key(1), &hello).unwrap();
    assert_eq!(wait.open_reply(&key(1), &frame(&reply)).unwrap(), hello);
    // A Hello under the wrong key is still refused.
    let (bytes, _) = seal_hello(&key(3), 1).unwrap();
    assert!(matches!(agent.open(&frame(&bytes)), Err(WireError::BadTag)));
}

#[test]
fn announcements_are_authenticated_acknowledged_and_not_replayable() {
    let ready = Response::Ready(Ready {
        boot_id: BOOT,
        identity: Identity::default(),
        flag: None,
        agent_version: "0.1.0".into(),
    });
    let mut controller = AnnounceOpener::default();
    let (bytes, wait) = seal_announce(&key(1), BOOT, 1, &ready).unwrap();
    let (boot, body, reply_to) = controller.open(&key(1), &frame(&bytes)).unwrap();
    assert_eq!((boot, body), (BOOT, ready.clone()));
    let ack = reply_to.seal_ack(&key(1)).unwrap();
    wait.open_ack(&key(1), &frame(&ack)).unwrap();
    assert!(matches!(
        controller.open(&key(1), &frame(&bytes)),
        Err(WireError::Replay { .. })
    ));
    let (bytes, _) = seal_announce(&key(2), BOOT, 2, &ready).unwrap();
    assert!(matches!(
        controller.open(&key(1), &frame(&bytes)),
        Err(WireError::BadTag)
    ));
    // An announcement is not a command, nor a command an announcement.
    let mut agent = CommandOpener::new(key(1), BOOT);
    let (bytes, _) = seal_announce(&key(1), BOOT, 3, &ready).unwrap();
    assert!(matches!(
        agent.open(&frame(&bytes)),
        Err(WireError::UnexpectedKind { .. })
    ));
}

#[test]
fn frames_split_off_a_buffer_in_order() {
    let mut client = CommandSealer::new(key(1), BOOT, 1);
    let (a, _) = client.seal(&Request::GetStatus).unwrap();
    let (b, _) = client.seal(&Request::Abort).unwrap();
    let joined = [a.clone(), b.clone()].concat();
    let (fa, rest) = RawFrame::parse(&joined).unwrap();
    let (fb, rest) = RawFrame::parse(rest).unwrap();
    assert_eq!(
        (fa.as_bytes(), fb.as_bytes(), rest),
        (&a[..], &b[..], &[][..])
    );
}
