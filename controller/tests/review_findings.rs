//! Found by an attacker's review, kept as regression tests. Review finding: `Store::record_announce` promises to keep "the most recent `keep` boots", but
//! evicts by key order (the smallest boot id first). A boot accepted a moment ago loses its
//! replay floor as soon as one more boot is recorded, if its random id happens to be the
//! smallest; after a controller restart (`ReadyListener::new` loads the floors from the store)
//! its captured `Ready` is accepted again.

use lazarus_controller::store::Store;

#[test]
fn the_floor_of_the_boot_just_accepted_survives_the_next_announcement() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let keep = 4;
    for i in 0..keep as u8 {
        store
            .record_announce("n", &[0x80 + i; 16], 1, keep)
            .unwrap();
    }
    // Node A's boot is accepted now; its id is random and here happens to sort first.
    let a = [0x01; 16];
    store.record_announce("n", &a, 1, keep).unwrap();
    // One more announcement (any node's).
    store.record_announce("n", &[0x90; 16], 1, keep).unwrap();
    let floors = store.announced().unwrap();
    assert!(
        floors.iter().any(|(_, b, _)| *b == a),
        "the floor of the second most recent boot was evicted; kept: {:?}",
        floors.iter().map(|(_, b, _)| b[0]).collect::<Vec<_>>()
    );
}

/// Review finding: the controller's agent client reads each frame with a per-read timeout
/// (`read_frame` with `set_read_timeout`), not a deadline for the whole frame: whatever answers
/// at a node's agent address (the rescue address the pool falls back to, or any host a node's
/// `Ready` names) holds the call, and the node's connection slot in `AgentPool`, for as long as
/// it trickles a byte before each timeout. The listeners got `read_frame_before`; the client did
/// not.
#[test]
fn a_trickling_agent_cannot_hold_the_controller_past_its_timeout() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let trickler = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        // A length prefix for a 1 KiB frame, then one byte every 700 ms for 10 s.
        let _ = s.write_all(&1024u32.to_be_bytes());
        for _ in 0..14 {
            std::thread::sleep(Duration::from_millis(700));
            if s.write_all(&[2]).is_err() {
                return;
            }
        }
    });
    let started = Instant::now();
    let got = lazarus_controller::agent_client::AgentClient::connect(
        &addr.to_string(),
        lazarus_proto::SigningKey::from_seed([1; 32]),
        lazarus_proto::AgentKey::from_bytes([2; 32]),
        Duration::from_secs(1),
    );
    let took = started.elapsed();
    assert!(got.is_err());
    trickler.join().unwrap();
    assert!(
        took < Duration::from_secs(4),
        "a 1 s timeout held the caller for {took:?} (a byte every 700 ms)"
    );
}

#[path = "common/mod.rs"]
mod common;

/// Review finding (agent admission): when the agent is full (64), every newcomer from an address
/// under its per-peer cap evicts the globally oldest unauthenticated connection. An attacker
/// with a dozen addresses that keeps connecting (and never sends a byte) churns the whole table
/// faster than a controller completes `Hello` and its first command, so the controller's new
/// connection is evicted before it authenticates: the controller is locked out while the churn
/// lasts (in Rebooting/Recovering, failed calls count against a good node).
#[test]
fn a_connection_churn_from_a_dozen_addresses_does_not_lock_the_controller_out() {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;
    let lab = common::Lab::new();
    let agent = lab.agent(None, None);
    let to: SocketAddr = agent.addr.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut churners = Vec::new();
    for t in 0..3u8 {
        let stop = stop.clone();
        churners.push(std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let from: std::net::IpAddr =
                    format!("127.0.{}.{}", 40 + t, 1 + i % 12).parse().unwrap();
                i += 1;
                let socket = rustix::net::socket(
                    rustix::net::AddressFamily::INET,
                    rustix::net::SocketType::STREAM,
                    None,
                )
                .unwrap();
                if rustix::net::bind(&socket, &SocketAddr::new(from, 0)).is_err() {
                    continue;
                }
                if rustix::net::connect(&socket, &to).is_ok() {
                    held.push_back(socket);
                    if held.len() > 300 {
                        held.pop_front();
                    }
                }
            }
        }));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (mut ok, mut failed) = (0, Vec::new());
    for _ in 0..20 {
        match lazarus_controller::agent_client::AgentClient::connect(
            &agent.addr,
            lab.signing.clone(),
            lab.key.clone(),
            Duration::from_secs(5),
        )
        .and_then(|mut c| c.status_of(&lazarus_proto::Request::GetStatus))
        {
            Ok(_) => ok += 1,
            Err(e) => failed.push(e.to_string()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for c in churners {
        c.join().unwrap();
    }
    assert!(
        failed.is_empty(),
        "{} of {} controller connections were refused under the churn ({ok} ok): {:?}",
        failed.len(),
        failed.len() + ok,
        &failed[..failed.len().min(3)]
    );
}

/// Review finding (minor): `record_announce` overwrites the floor instead of keeping the larger
/// one. The Ready listener opens under the opener's lock but records outside it, so two
/// announcements of one boot on two threads (an attempt that timed out at the agent while its
/// thread waited on the database, and the retry) can commit in the other order: the store keeps
/// the lower counter and, after a restart, the higher announcement replays.
#[test]
fn a_floor_never_goes_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let boot = [0x42; 16];
    store.record_announce("n", &boot, 6, 1024).unwrap();
    store.record_announce("n", &boot, 5, 1024).unwrap();
    assert_eq!(store.announced().unwrap(), vec![("n".to_string(), boot, 6)]);
}
