//! Found by an attacker's review, kept as regression tests. Review findings (security review of protocol v2): each test states what the trust model in
//! docs/protocol.md promises and fails while the code does not keep that promise.
//!
//! The promise: a holder of node B's medium (B's agent key) "cannot speak for any other node",
//! and a network tap "cannot replay a `Ready` (counter floor, persisted)".

use lazarus_proto::frame::{read_frame, seal_announce, AnnounceOpener, RawFrame, RECENT_BOOTS};
use lazarus_proto::*;

fn frame(bytes: &[u8]) -> RawFrame {
    read_frame(&mut &bytes[..]).expect("well-formed frame")
}

fn ready(boot: BootId, mac: u8) -> Response {
    Response::Ready(Ready {
        boot_id: boot,
        identity: Identity {
            macs: vec![MacAddr([2, 0, 0, 0, 0, mac])],
            ..Identity::default()
        },
        flag: None,
        agent_version: "x".into(),
    })
}

const A_BOOT: BootId = BootId([0xa0; 16]);

/// Node B's key holder raises the replay floor of node A's boot (its id is in clear on the wire,
/// in every Ready and Hello reply): the floor is keyed by boot id alone, not by (node, boot id),
/// so A's genuine announcements are then refused as replays and A's repair waits for a `Ready`
/// that is never accepted.
#[test]
fn another_nodes_key_cannot_raise_this_nodes_replay_floor() {
    let key_a = AgentKey::from_bytes([0xaa; 32]);
    let key_b = AgentKey::from_bytes([0xbb; 32]);
    let mut opener = AnnounceOpener::default();
    // B (its own MAC, its own key: matched to B and verified under B's key) names A's boot id.
    let (forged, _) = seal_announce(&key_b, A_BOOT, u64::MAX, &ready(A_BOOT, 0xb)).unwrap();
    opener
        .open("b", &key_b, &frame(&forged))
        .expect("B's announcement verifies under B's key");
    // A's agent announces its first Ready (counter 1) under its own key.
    let (genuine, _) = seal_announce(&key_a, A_BOOT, 1, &ready(A_BOOT, 0xa)).unwrap();
    let got = opener.open("a", &key_a, &frame(&genuine));
    assert!(
        got.is_ok(),
        "node A's genuine Ready refused because node B's key set the floor of A's boot: {:?}",
        got.err()
    );
}

/// Node B's key holder sends RECENT_BOOTS announcements with fresh boot ids (each accepted: a
/// new boot has no floor), pushing every other boot's floor out of the opener (and of the store,
/// which keeps the same number of boots); a `Ready` of node A captured earlier then verifies
/// again and the controller acts on it (a stale boot id and address for A).
#[test]
fn a_captured_ready_stays_dead_after_another_node_floods_fresh_boots() {
    let key_a = AgentKey::from_bytes([0xaa; 32]);
    let key_b = AgentKey::from_bytes([0xbb; 32]);
    let mut opener = AnnounceOpener::default();
    let (captured, _) = seal_announce(&key_a, A_BOOT, 1, &ready(A_BOOT, 0xa)).unwrap();
    opener.open("a", &key_a, &frame(&captured)).unwrap();
    assert!(opener.open("a", &key_a, &frame(&captured)).is_err());
    for i in 0..RECENT_BOOTS as u32 {
        let mut id = [0xffu8; 16];
        id[..4].copy_from_slice(&i.to_be_bytes());
        let (f, _) = seal_announce(&key_b, BootId(id), 1, &ready(BootId(id), 0xb)).unwrap();
        opener.open("b", &key_b, &frame(&f)).unwrap();
    }
    assert!(
        opener.open("a", &key_a, &frame(&captured)).is_err(),
        "node A's captured Ready was accepted again after node B announced {RECENT_BOOTS} boots"
    );
}

/// Review finding (controller log flooding, no key needed): the Ready listener logs
/// `"Ready from an unknown machine {peer} (MACs {:?})"` with the MACs of an announcement it has
/// only peeked at, unauthenticated and without a rate limit (the agent rate-limits its own
/// warnings; the listener does not). One maximal frame names ~9,000 MACs: this shows the line
/// that one 64 KiB frame, signed by nobody, writes into the controller's log.
#[test]
fn one_unauthenticated_announcement_cannot_write_more_log_than_it_sent() {
    let macs: Vec<MacAddr> = (0..9_000u32)
        .map(|i| {
            let b = i.to_be_bytes();
            MacAddr([2, 0, b[0], b[1], b[2], b[3]])
        })
        .collect();
    let body = Response::Ready(Ready {
        boot_id: A_BOOT,
        identity: Identity {
            macs,
            ..Identity::default()
        },
        flag: None,
        agent_version: String::new(),
    });
    let garbage_key = AgentKey::from_bytes([0x55; 32]);
    let (bytes, _) = seal_announce(&garbage_key, A_BOOT, 1, &body).expect("fits in one frame");
    let peeked = match frame(&bytes).peek_announce().unwrap() {
        Response::Ready(r) => r,
        _ => unreachable!(),
    };
    let line = format!(
        "Ready from an unknown machine 10.0.0.9:4242 ({})",
        peeked.identity.summary()
    );
    assert!(
        line.len() <= bytes.len(),
        "one unauthenticated frame of {} bytes writes a log line of {} bytes",
        bytes.len(),
        line.len()
    );
}
