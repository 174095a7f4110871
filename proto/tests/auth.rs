//! Every rejection the protocol promises, each with its own error, plus the happy paths: the
//! controller signs, an agent verifies with the public key alone; the agent tags with its own
//! key, the controller checks with that node's key.

use lazarus_proto::frame::{
    read_frame, seal_announce, seal_hello, version_reject, AnnounceOpener, CommandOpener,
    CommandSealer, RawFrame, TAG_LEN,
};
use lazarus_proto::*;

/// A node's (or repair's) agent key.
fn key(n: u8) -> AgentKey {
    AgentKey::from_bytes([n; 32])
}

/// A controller's signing key.
fn signer(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32])
}

fn public(n: u8) -> PublicKey {
    signer(n).public()
}

/// A session opened by `Hello` on a fresh connection to the agent boot `BOOT`: the client's
/// sealer and the agent's opener.
fn session(client_key: u8, agent_trusts: u8, session: u64) -> (CommandSealer, CommandOpener) {
    let mut agent = CommandOpener::new(public(agent_trusts), BOOT);
    let hello = agent.begin(session);
    (CommandSealer::new(signer(client_key), &hello), agent)
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
        unrestored: Vec::new(),
        copy: Default::default(),
    })
}

fn frame(bytes: &[u8]) -> RawFrame {
    read_frame(&mut &bytes[..]).expect("well-formed frame")
}

#[test]
fn command_and_reply_round_trip() {
    let (mut client, mut agent) = session(1, 1, 77);
    let (bytes, wait) = client.seal(&Request::GetStatus).unwrap();
    let (request, reply_to) = agent.open(&frame(&bytes)).unwrap();
    assert_eq!(request, Request::GetStatus);
    let reply = reply_to.seal_reply(&key(1), &status()).unwrap();
    assert_eq!(wait.open_reply(&key(1), &frame(&reply)).unwrap(), status());
}

#[test]
fn a_command_signed_by_another_key_is_rejected_as_bad_tag() {
    let (mut client, mut agent) = session(2, 1, 77);
    let (bytes, _) = client.seal(&Request::Abort).unwrap();
    assert!(matches!(agent.open(&frame(&bytes)), Err(WireError::BadTag)));
}

#[test]
fn the_base_image_alone_commands_nothing() {
    // Everything in a public rescue image: the controller's public key. An attacker who has it
    // can only sign with a key of their own; an HMAC under any key is not a signature; and the
    // agent's own key (from a node's media) makes replies, never commands.
    let mut agent = CommandOpener::new(public(1), BOOT);
    let hello = agent.begin(5);
    for forged_by in [3u8, 4] {
        let mut client = CommandSealer::new(signer(forged_by), &hello);
        let (bytes, _) = client.seal(&Request::Reboot).unwrap();
        assert!(matches!(agent.open(&frame(&bytes)), Err(WireError::BadTag)));
    }
    let (_, reply_to) = {
        let mut legit = CommandSealer::new(signer(1), &hello);
        let (bytes, _) = legit.seal(&Request::GetStatus).unwrap();
        agent.open(&frame(&bytes)).unwrap()
    };
    let reply = reply_to.seal_reply(&key(1), &status()).unwrap();
    assert!(
        agent.open(&frame(&reply)).is_err(),
        "a reply is not a command"
    );
    // A Recover tagged with an agent key in place of a signature.
    let (bytes, _) = seal_announce(&key(1), BOOT, 9, &status()).unwrap();
    assert!(agent.open(&frame(&bytes)).is_err());
}

#[test]
fn every_flipped_bit_is_rejected() {
    let (mut client, _) = session(1, 1, 77);
    let (bytes, _) = client.seal(&Request::GetLogs { since: 3 }).unwrap();
    for bit in 0..bytes.len() * 8 {
        let mut bad = bytes.clone();
        bad[bit / 8] ^= 1 << (bit % 8);
        let (_, mut agent) = session(1, 1, 77);
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
    let (mut client, mut agent) = session(1, 1, 77);
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
fn a_command_captured_on_one_connection_is_dead_on_every_other() {
    let (mut client, mut agent) = session(1, 1, 77);
    let (captured, _) = client.seal(&Request::Reboot).unwrap();
    agent.open(&frame(&captured)).unwrap();
    // A new connection: no session until Hello, then one the agent drew afresh.
    let mut other = CommandOpener::new(public(1), BOOT);
    assert!(matches!(
        other.open(&frame(&captured)),
        Err(WireError::NoSession { found: 77 })
    ));
    // Replaying the captured Hello too opens a session the attacker cannot name in a command.
    let (hello, _) = seal_hello(&signer(1), 1).unwrap();
    let (request, _) = other.open(&frame(&hello)).unwrap();
    assert_eq!(request, Request::Hello);
    other.begin(0x5eed);
    assert!(matches!(
        other.open(&frame(&captured)),
        Err(WireError::NoSession { found: 77 })
    ));
}

#[test]
fn two_clients_never_refuse_each_others_counters() {
    // The controller and an operator's `lazarus agent`, each on its own connection to one agent.
    let mut conn_a = CommandOpener::new(public(1), BOOT);
    let mut conn_b = CommandOpener::new(public(1), BOOT);
    let mut a = CommandSealer::new(signer(1), &conn_a.begin(1));
    let mut b = CommandSealer::new(signer(1), &conn_b.begin(2));
    for _ in 0..5 {
        let (fa, _) = a.seal(&Request::GetStatus).unwrap();
        let (fb, _) = b.seal(&Request::GetStatus).unwrap();
        conn_b.open(&frame(&fb)).unwrap();
        conn_a.open(&frame(&fa)).unwrap();
    }
}

#[test]
fn request_for_another_boot_is_rejected() {
    let (_, mut agent) = session(1, 1, 77);
    let mut client = CommandSealer::new(
        signer(1),
        &Hello {
            boot_id: BootId([8; 16]),
            next_counter: 1,
            agent_version: String::new(),
            session: 77,
        },
    );
    let (bytes, _) = client.seal(&Request::Reboot).unwrap();
    assert!(matches!(
        agent.open(&frame(&bytes)),
        Err(WireError::WrongBootId { expected: BOOT, .. })
    ));
}

#[test]
fn truncated_frame_is_rejected_at_every_length() {
    let (mut client, _) = session(1, 1, 77);
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
    let (mut client, mut agent) = session(1, 1, 77);
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
    let (bytes, _) = client.seal(&Request::GetLogs { since: 0 }).unwrap();
    let (_, reply_to) = agent.open(&frame(&bytes)).unwrap();
    assert!(matches!(
        reply_to.seal_reply(&key(1), &logs),
        Err(WireError::Oversized { .. })
    ));
}

#[test]
fn runt_frame_is_rejected() {
    let bytes = [0, 0, 0, 5, 2, 1, 0, 0, 0];
    assert!(matches!(
        read_frame(&mut &bytes[..]),
        Err(WireError::Runt { len: 5 })
    ));
}

#[test]
fn unknown_version_is_rejected_and_a_reject_frame_names_ours() {
    let (mut client, mut agent) = session(1, 1, 77);
    let (mut bytes, _) = client.seal(&Request::GetStatus).unwrap();
    bytes[4] = 9;
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
    // A peer holding the agent's key but sending a variant this build does not know.
    use hmac::{KeyInit, Mac};
    let mut bytes = vec![0, 0, 0, 0, PROTOCOL_VERSION, 3];
    bytes.extend_from_slice(&[7; 16]); // boot id
    bytes.push(0); // session
    bytes.push(1); // counter
    bytes.push(200); // unknown Response variant
    let len = (bytes.len() - 4 + TAG_LEN) as u32;
    bytes[..4].copy_from_slice(&len.to_be_bytes());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[1; 32]).unwrap();
    mac.update(b"LZR2N");
    mac.update(&bytes);
    let tag: [u8; 32] = mac.finalize().into_bytes().into();
    bytes.extend_from_slice(&tag);
    assert!(matches!(
        AnnounceOpener::default().open("n1", &key(1), &frame(&bytes)),
        Err(WireError::Undecodable(_))
    ));
}

#[test]
fn reply_is_bound_to_its_request_and_to_the_agent_asked() {
    let (mut client, mut agent) = session(1, 1, 77);
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
    // Another node's agent (its own key) cannot answer for this one.
    let (third, wait_third) = client.seal(&Request::GetStatus).unwrap();
    let (_, reply_third) = agent.open(&frame(&third)).unwrap();
    let forged = reply_third.seal_reply(&key(2), &status()).unwrap();
    assert!(matches!(
        wait_third.open_reply(&key(1), &frame(&forged)),
        Err(WireError::BadTag)
    ));
}

#[test]
fn hello_works_before_the_boot_id_is_known_and_opens_a_session() {
    let mut agent = CommandOpener::new(public(1), BOOT);
    assert!(!agent.authenticated());
    let (bytes, wait) = seal_hello(&signer(1), 0xdead_beef).unwrap();
    let (request, reply_to) = agent.open(&frame(&bytes)).unwrap();
    assert_eq!(request, Request::Hello);
    let hello = agent.begin(0x1234);
    assert!(!agent.authenticated(), "a Hello may be a recording");
    assert_eq!(
        (hello.boot_id, hello.session, hello.next_counter),
        (BOOT, 0x1234, 1)
    );
    let reply = reply_to
        .seal_reply(&key(1), &Response::Hello(hello.clone()))
        .unwrap();
    assert_eq!(
        wait.open_reply(&key(1), &frame(&reply)).unwrap(),
        Response::Hello(hello.clone())
    );
    let mut client = CommandSealer::new(signer(1), &hello);
    let (bytes, _) = client.seal(&Request::GetStatus).unwrap();
    agent.open(&frame(&bytes)).unwrap();
    assert!(
        agent.authenticated(),
        "a command of the session proves the key"
    );
    // A Hello signed by another key is still refused.
    let (bytes, _) = seal_hello(&signer(3), 1).unwrap();
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
    assert_eq!(frame(&bytes).peek_announce().unwrap(), ready);
    let (boot, counter, body, reply_to) = controller.open("n1", &key(1), &frame(&bytes)).unwrap();
    assert_eq!((boot, counter, body), (BOOT, 1, ready.clone()));
    let ack = reply_to.seal_ack(&signer(1)).unwrap();
    wait.open_ack(&public(1), &frame(&ack)).unwrap();
    // An acknowledgement signed by anyone else is not one.
    let forged = reply_to.seal_ack(&signer(2)).unwrap();
    assert!(matches!(
        wait.open_ack(&public(1), &frame(&forged)),
        Err(WireError::BadTag)
    ));
    assert!(matches!(
        controller.open("n1", &key(1), &frame(&bytes)),
        Err(WireError::Replay { .. })
    ));
    // After a controller restart, the floor it persisted still refuses the old announcement.
    let mut restarted = AnnounceOpener::default();
    restarted.remember("n1", BOOT, counter);
    assert!(matches!(
        restarted.open("n1", &key(1), &frame(&bytes)),
        Err(WireError::Replay { .. })
    ));
    let (bytes, _) = seal_announce(&key(2), BOOT, 2, &ready).unwrap();
    assert!(matches!(
        controller.open("n1", &key(1), &frame(&bytes)),
        Err(WireError::BadTag)
    ));
    // An announcement is not a command, nor a command an announcement.
    let (_, mut agent) = session(1, 1, 77);
    let (bytes, _) = seal_announce(&key(1), BOOT, 3, &ready).unwrap();
    assert!(matches!(
        agent.open(&frame(&bytes)),
        Err(WireError::UnexpectedKind { .. })
    ));
}

#[test]
fn frames_split_off_a_buffer_in_order() {
    let (mut client, _) = session(1, 1, 77);
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
