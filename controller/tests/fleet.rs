//! The fleet simulator's path under `cargo test`: a real `lazarus serve` holding 200 simulated
//! nodes on loopback addresses (health endpoints, agents speaking the real protocol, `command`
//! providers), five workers failing at once and each repaired back to a standby. The full-size
//! runs (1,000 and 10,000 nodes) are `scripts/bench`'s `bench controller` lines.

mod sim;

use std::time::Duration;

use lazarus_controller::cluster::Role;

#[test]
fn a_simulated_fleet_is_checked_every_interval_and_failed_nodes_come_back_as_standbys() {
    sim::raise_nofile();
    let dir = tempfile::tempdir().unwrap();
    let opts = sim::Options {
        nodes: 200,
        standbys: 20,
        // A second octet of its own (127.N.x.y), from the process id: two runs at once on one machine
        // (two worktrees' tests) rarely share it.
        net: 150 + (std::process::id() % 100) as u8,
        interval: Duration::from_secs(1),
        timeout: Duration::from_millis(500),
        failure_threshold: 3,
        max_concurrent_repairs: 10,
        recover: Duration::from_secs(2),
        lazarus: env!("CARGO_BIN_EXE_lazarus").into(),
        workdir: dir.path().to_owned(),
    };
    let mut fleet = sim::Fleet::start(opts).unwrap();
    fleet.wait_all_healthy(Duration::from_secs(60)).unwrap();
    let (checks_per_s, cpu) = fleet.measure(Duration::from_secs(3)).unwrap();
    eprintln!("200 nodes: {checks_per_s:.0} checks/s, controller at {cpu:.0}% of a core");
    // Every node checked once a second (a loaded test machine gets some slack).
    assert!(checks_per_s >= 160.0, "{checks_per_s} checks/s");

    let names = fleet.names();
    let failed: Vec<String> = [3, 50, 99, 140, 177]
        .iter()
        .map(|&i| {
            assert!(fleet.is_worker(i));
            fleet.fail(i);
            names[i].clone()
        })
        .collect();
    let back = fleet
        .wait_repaired(&failed, Duration::from_secs(120))
        .unwrap();
    assert_eq!(back, failed.len(), "{}", fleet.log_tail(40));
    let detect = fleet.detect_times(&failed);
    assert_eq!(
        detect.len(),
        failed.len(),
        "every failure led to a promotion"
    );
    eprintln!("failure to promotion: {detect:?} s");
    // 3 failed checks a second apart, plus a round of slack each side; generous for a busy
    // test machine (scripts/bench measures the real figure).
    assert!(sim::percentile(&detect, 100.0) < 10.0, "{detect:?}");
    {
        let seen = fleet.seen.lock().unwrap();
        assert_eq!(seen.recovers, failed.len(), "one plan per repair");
        assert!(seen.polls >= failed.len(), "the controller polled progress");
    }
    let status = fleet.status().unwrap();
    for name in &failed {
        let n = status.nodes.iter().find(|n| &n.name == name).unwrap();
        assert_eq!(
            (n.role, n.state.as_str()),
            (Role::Standby, "healthy"),
            "{n:?}"
        );
    }
    let workers = status
        .nodes
        .iter()
        .filter(|n| n.role == Role::Worker)
        .count();
    assert_eq!(
        workers, 180,
        "each failed worker's place was taken by a standby"
    );
    let metrics = lazarus_controller::api_client::ApiClient::unix(&fleet.api_socket)
        .get("/metrics")
        .unwrap();
    let checks: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("lazarus_health_checks_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(checks >= 1000, "{metrics}");
    assert!(
        metrics.contains("lazarus_repairs_succeeded_total 5\n"),
        "{metrics}"
    );
    let text = std::fs::read_to_string(&fleet.log).unwrap();
    assert!(
        text.contains("agent reports RECOVERED"),
        "{}",
        fleet.log_tail(40)
    );
}
