//! Hostile peers against the two listeners anyone on the network can reach: the agent's command
//! port and the controller's `Ready` port. Each case asserts the safe outcome: idle and trickling
//! sockets never lock a legitimate client out, garbage costs neither memory nor threads, and an
//! announcement replayed after a controller restart, or made under another node's key, is
//! ignored. Real processes over real sockets; clients bind distinct loopback addresses to play
//! many hosts.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use lazarus_proto::frame::{read_frame, seal_announce};
use lazarus_proto::*;

/// `n` connections from `hosts` distinct addresses: half send nothing, half trickle one byte of
/// a frame header every 500 ms on threads of their own. Returns the idle ones.
fn flood(to: SocketAddr, n: usize, hosts: usize) -> Vec<TcpStream> {
    let mut idle = Vec::new();
    for i in 0..n {
        let from = format!("127.0.{}.{}", 10 + i % hosts, 1 + i / hosts);
        let Ok(mut s) = connect_from(&from, to) else {
            continue;
        };
        if i % 2 == 0 {
            idle.push(s);
        } else {
            std::thread::spawn(move || {
                for _ in 0..120 {
                    if s.write_all(&[0]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(500));
                }
            });
        }
    }
    idle
}

/// Threads and resident memory (KiB) of process `pid`.
fn threads_and_rss(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("Threads:"), field("VmRSS:"))
}

#[test]
fn forty_idle_and_trickling_connections_do_not_lock_the_controller_out_of_an_agent() {
    let lab = Lab::new();
    let agent = lab.agent(None, None);
    let addr: SocketAddr = agent.addr.parse().unwrap();
    let idle = flood(addr, 48, 6);
    // The agent keeps serving the controller: status answers, and again a moment later.
    for _ in 0..2 {
        let started = Instant::now();
        let mut client = lab.client(&agent);
        assert_eq!(
            client.status_of(&Request::GetStatus).unwrap().phase,
            Phase::Ready
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "status took {:?} under the flood",
            started.elapsed()
        );
    }
    // An idle connection is closed: a first frame is due within seconds, not minutes.
    let mut s = idle.into_iter().last().expect("idle connections");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let started = Instant::now();
    let closed = matches!(s.read(&mut [0u8; 1]), Ok(0) | Err(_));
    assert!(closed && started.elapsed() < Duration::from_secs(20));
}

#[test]
fn ten_thousand_garbage_frames_cost_an_agent_no_memory_and_no_threads() {
    let lab = Lab::new();
    let agent = lab.agent(None, None);
    let addr: SocketAddr = agent.addr.parse().unwrap();
    let pid = agent.child.id();
    // Warm up (the first connections allocate the server's steady state), then measure.
    let send = |n: usize, seed: u64| {
        let junk = noise(4096, seed);
        for i in 0..n {
            let Ok(mut s) = TcpStream::connect(addr) else {
                continue;
            };
            let mut frame = ((i % 4000 + 40) as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(&[PROTOCOL_VERSION, 1 + (i % 4) as u8]);
            frame.extend_from_slice(&junk[..i % 4000 + 38]);
            let _ = s.write_all(&frame);
            let _ = s.read(&mut [0u8; 1]); // the agent closes without an answer
        }
    };
    send(500, 1);
    let (threads_before, rss_before) = threads_and_rss(pid);
    send(10_000, 2);
    let (threads_after, rss_after) = threads_and_rss(pid);
    eprintln!(
        "agent: {threads_before} -> {threads_after} threads, {rss_before} -> {rss_after} KiB"
    );
    assert!(
        threads_after <= threads_before + 2,
        "threads grew: {threads_before} -> {threads_after}"
    );
    assert!(
        rss_after < rss_before + 8 * 1024,
        "memory grew: {rss_before} -> {rss_after} KiB"
    );
    assert!(agent.log().contains("ignoring a command"));
    let mut client = lab.client(&agent);
    client.status_of(&Request::GetStatus).unwrap();
}

/// A controller over w1 and s1 (manual providers, healthy), Ready on `ready`.
fn controller(lab: &Lab, ready: SocketAddr, data: &str, log: &str) -> std::process::Child {
    let api = lab.path(&format!("{data}-api.sock")).display().to_string();
    let config = two_node_cluster(
        lab,
        &format!("ready = \"{ready}\"\napi = {{ socket = \"{api}\" }}"),
        ["127.0.0.90", "127.0.0.91"],
    );
    let child = serve(&config, &lab.path(data), &lab.path(log));
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(ready).is_err() {
        assert!(Instant::now() < deadline, "no Ready port");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn wait_log(path: &std::path::Path, what: &str, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(what)
        {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `Ready` of w1 (its MAC) sealed under `key` with `counter`.
fn ready_frame(key: &AgentKey, boot: BootId, counter: u64) -> Vec<u8> {
    let ready = Response::Ready(Ready {
        boot_id: boot,
        identity: Identity {
            macs: vec![W1_MAC.parse().unwrap()],
            address: Some(IpAddr::from([127, 0, 0, 90])),
            ..Identity::default()
        },
        flag: None,
        agent_version: "test".into(),
    });
    seal_announce(key, boot, counter, &ready).unwrap().0
}

/// Sends one announcement; whether it was acknowledged.
fn announce(to: SocketAddr, frame: &[u8]) -> bool {
    let mut s = TcpStream::connect(to).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(frame).unwrap();
    read_frame(&mut s).is_ok()
}

#[test]
fn trickling_peers_hold_up_no_ready_and_replayed_or_forged_ones_are_ignored_across_restarts() {
    let lab = Lab::new();
    let ready: SocketAddr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let log = lab.path("controller.log");
    let mut first = lazarus_testkit::Reaped::default();
    first.push(controller(&lab, ready, "data", "controller.log"));
    let _idle = flood(ready, 48, 6);

    // A genuine announcement gets through the flood at once.
    let boot = BootId([0x42; 16]);
    let genuine = ready_frame(&lab.key, boot, 1);
    let started = Instant::now();
    assert!(
        announce(ready, &genuine),
        "the genuine Ready was not acknowledged"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(wait_log(&log, "w1: agent ready", Duration::from_secs(10)));

    // Made under another key (someone else's media) while claiming w1's MAC: ignored.
    let forged = ready_frame(&AgentKey::from_bytes([7; 32]), BootId([1; 16]), 1);
    assert!(!announce(ready, &forged));
    assert!(wait_log(
        &log,
        "ignoring an announcement for w1",
        Duration::from_secs(10)
    ));

    // The controller restarts; the captured announcement, replayed, is refused.
    drop(first);
    let log2 = lab.path("controller2.log");
    let mut second = lazarus_testkit::Reaped::default();
    second.push(controller(&lab, ready, "data", "controller2.log"));
    assert!(
        !announce(ready, &genuine),
        "a replayed Ready was acknowledged"
    );
    assert!(wait_log(&log2, "replayed", Duration::from_secs(10)));
    // The same boot's next announcement is fine.
    assert!(announce(ready, &ready_frame(&lab.key, boot, 2)));
}
