//! The controller (`lazarus serve`, a real process) against real host-mode agents over loopback:
//! a worker fails, is fenced, a standby is promoted, the command boot provider "boots" the rescue
//! agent, the repair runs, the node returns as a standby. And the controller killed with SIGKILL
//! mid-repair, then restarted, resumes without promoting twice.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use common::*;
use lazarus_controller::api::StatusView;
use lazarus_controller::api_client::ApiClient;

const MIB: usize = 1 << 20;

/// A node's health endpoint: a TCP port that accepts connections.
struct HealthPort {
    addr: String,
    _listener: TcpListener,
}

impl HealthPort {
    fn new(ip: &str) -> Self {
        let l = TcpListener::bind((ip, 0)).unwrap();
        Self {
            addr: l.local_addr().unwrap().to_string(),
            _listener: l,
        }
    }
}

fn wait_for(
    api: &str,
    what: &str,
    timeout: Duration,
    log: &Path,
    pred: impl Fn(&StatusView) -> bool,
) -> StatusView {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = ApiClient::unix(api).status() {
            if pred(&s) {
                return s;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}: {s:?}\n{}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
        } else if Instant::now() > deadline {
            panic!(
                "no API while waiting for {what}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state_of(s: &StatusView, node: &str) -> String {
    s.nodes
        .iter()
        .find(|n| n.name == node)
        .map(|n| n.state.clone())
        .unwrap_or_default()
}

#[test]
fn a_failed_worker_is_replaced_repaired_and_returns_as_a_standby_across_a_controller_kill() {
    let lab = Lab::new();
    let img = noise(3 * MIB, 21);
    lab.image("worker.img", &img);
    let disk = lab.path("w1-disk.img");
    std::fs::write(&disk, noise(4 * MIB, 22)).unwrap();
    let flag = lab.flag("w1-flag.img");
    let s1_health = HealthPort::new("127.0.0.32");
    let hook_log = lab.path("promotions.log");
    let hook = lab.path("promote.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$LAZARUS_FAILED $LAZARUS_PROMOTED\" >> {}\n",
            hook_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let standby_log = lab.path("standby.log");
    let standby_hook = lab.path("standby.sh");
    std::fs::write(
        &standby_hook,
        format!(
            "#!/bin/sh\necho \"$LAZARUS_NODE\" >> {}\n",
            standby_log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &standby_hook,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let api = lab.path("api.sock").display().to_string();
    let ready = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    // The "rescue boot" of w1: start a host-mode agent at 127.0.0.41, announcing w1's MAC.
    let agents = Agents {
        file: lab.path("agents.pids"),
    };
    let attach = agents.attach(
        &lab,
        "w1",
        "127.0.0.41:7460",
        "52:54:00:00:10:01",
        &ready,
        &flag,
    );
    let config = lab.path("cluster.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[controller]
api = {{ socket = "{api}" }}
ready = "{ready}"
{keys}
[policy]
health_interval = "500ms"
health_timeout = "300ms"
failure_threshold = 2
recovery_threshold = 1
max_concurrent_repairs = 1
max_unhealthy = 2
poll_interval = "300ms"
retries = 2

[promotion]
command = ["{hook}"]

[standby]
command = ["{standby_hook}"]
{image}{w1}{s1}"#,
            keys = lab.key_config(&["w1", "s1"]),
            hook = hook.display(),
            standby_hook = standby_hook.display(),
            image = worker_image_toml("format = \"raw\"", img.len(), sha(&img)),
            w1 = worker_toml(
                "w1",
                "52:54:00:00:10:01",
                &lab.path("w1-up"),
                &attach,
                "127.0.0.41",
                &disk,
                &flag
            ),
            s1 = standby_toml(
                "s1",
                "52:54:00:00:10:02",
                &format!("{{ kind = \"tcp\", target = \"{}\" }}", s1_health.addr),
                "127.0.0.42"
            ),
        ),
    )
    .unwrap();
    std::fs::write(lab.path("w1-up"), "").unwrap();
    let data = lab.path("data");
    let log = lab.path("controller.log");
    let mut controller = serve(&config, &data, &log);
    wait_for(&api, "all healthy", Duration::from_secs(20), &log, |s| {
        s.nodes.iter().all(|n| n.state == "healthy")
    });

    // w1 dies.
    std::fs::remove_file(lab.path("w1-up")).unwrap();
    let s = wait_for(&api, "w1 recovering", Duration::from_secs(60), &log, |s| {
        matches!(
            state_of(s, "w1").as_str(),
            "recovering" | "detaching" | "rebooting" | "verifying"
        )
    });
    assert_eq!(
        s.nodes.iter().find(|n| n.name == "s1").unwrap().role,
        lazarus_controller::cluster::Role::Worker
    );

    // The controller dies mid-repair and comes back: it resumes from its store.
    let _ = controller.kill();
    let _ = controller.wait();
    let mut controller = serve(&config, &data, &log);
    // The restored node comes up (its health check passes) once the agent has been told to reboot.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ApiClient::unix(&api).status().ok();
        let st = s.as_ref().map(|s| state_of(s, "w1")).unwrap_or_default();
        if st == "verifying" || st == "rebooting" {
            std::fs::write(lab.path("w1-up"), "").unwrap();
        }
        if st == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w1 did not come back: {s:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let s = ApiClient::unix(&api).status().unwrap();
    let w1 = s.nodes.iter().find(|n| n.name == "w1").unwrap();
    assert_eq!(w1.role, lazarus_controller::cluster::Role::Standby);
    assert!(
        std::fs::read(&disk).unwrap()[..img.len()] == img[..],
        "w1's disk does not hold the image"
    );
    assert_eq!(flag_json(&flag)["state"], "recovered");
    assert_eq!(
        std::fs::read_to_string(&hook_log).unwrap(),
        "w1 s1\n",
        "promoted more or less than once"
    );
    // The hook runs as an action after the transition: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&standby_log)
        .unwrap_or_default()
        .is_empty()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(&standby_log).unwrap_or_default(),
        "w1\n",
        "the [standby] hook did not run once for the rejoined node"
    );
    let events = ApiClient::unix(&api).events(Some("w1")).unwrap();
    let path: Vec<&str> = events.iter().map(|e| e.to.as_str()).collect();
    // waiting_ready may be skipped: a fast agent announces Ready before the attach command returns.
    for step in [
        "failing",
        "queued",
        "fencing",
        "promoting",
        "attaching",
        "recovering",
        "detaching",
        "rebooting",
        "verifying",
        "healthy",
    ] {
        assert!(path.contains(&step), "{step} missing from {path:?}");
    }
    let metrics = ApiClient::unix(&api).get("/metrics").unwrap();
    assert!(
        metrics.contains("lazarus_repairs_succeeded_total 1"),
        "{metrics}"
    );
    let out = lazarus(&["status", "--api", &format!("unix:{api}")]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("w1"),
        "{out:?}"
    );
    let _ = controller.kill();
    let _ = controller.wait();
}

/// A controller over `workers` worker nodes (health: a file exists) and one standby; each
/// worker's "rescue boot" starts a host-mode agent at 127.0.0.(50+i).
/// Agents of a cluster listen at 127.0.<net>.<i>: tests run in parallel.
struct Cluster {
    /// First, so dropped before the lab folder that holds the pid file.
    agents: Agents,
    lab: Lab,
    api: String,
    log: std::path::PathBuf,
    controller: Child,
}

impl Cluster {
    fn start(workers: usize, image_digest_ok: bool, policy: &str) -> Self {
        Self::start_with(workers, image_digest_ok, policy, false).0
    }

    /// With `fifo`, the image is a named pipe the test feeds (returned), so a recovery can be held
    /// mid-copy.
    fn start_with(
        workers: usize,
        image_digest_ok: bool,
        policy: &str,
        fifo: bool,
    ) -> (Self, Vec<u8>) {
        static NEXT_NET: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(100);
        let net = NEXT_NET.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let lab = Lab::new();
        let img = noise(2 * MIB, 31);
        if fifo {
            lab.fifo_image("worker.img");
        } else {
            lab.image("worker.img", &img);
        }
        let mut digest = sha(&img);
        if !image_digest_ok {
            digest.0[0] ^= 0xff;
        }
        let api = lab.path("api.sock").display().to_string();
        let ready = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let agents = Agents {
            file: lab.path("agents.pids"),
        };
        let mut nodes = String::new();
        for i in 1..=workers {
            let disk = lab.path(&format!("w{i}-disk.img"));
            let flag = lab.flag(&format!("w{i}-flag.img"));
            std::fs::write(&disk, noise(3 * MIB, i as u64)).unwrap();
            std::fs::write(lab.path(&format!("w{i}-up")), "").unwrap();
            let attach = agents.attach(
                &lab,
                &format!("w{i}"),
                &format!("127.0.{net}.{i}:7460"),
                &format!("52:54:00:00:20:{i:02x}"),
                &ready,
                &flag,
            );
            nodes.push_str(&worker_toml(
                &format!("w{i}"),
                &format!("52:54:00:00:20:{i:02x}"),
                &lab.path(&format!("w{i}-up")),
                &attach,
                &format!("127.0.{net}.{i}"),
                &disk,
                &flag,
            ));
        }
        let config = lab.path("cluster.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[controller]
api = {{ socket = "{api}" }}
ready = "{ready}"
{keys}
[policy]
health_interval = "400ms"
health_timeout = "300ms"
failure_threshold = 2
recovery_threshold = 1
poll_interval = "300ms"
{policy}
{image}{nodes}{s1}"#,
                image = worker_image_toml("format = \"raw\"", img.len(), digest),
                s1 = standby_toml(
                    "s1",
                    "52:54:00:00:20:ff",
                    "{ kind = \"exec\", command = [\"true\"] }",
                    "127.0.0.99"
                ),
                keys = lab.key_config(
                    &(1..=workers)
                        .map(|i| format!("w{i}"))
                        .chain(["s1".to_string()])
                        .collect::<Vec<_>>()
                        .iter()
                        .map(String::as_str)
                        .collect::<Vec<_>>()
                ),
            ),
        )
        .unwrap();
        let log = lab.path("controller.log");
        let controller = serve(&config, &lab.path("data"), &log);
        let c = Self {
            lab,
            api,
            log,
            controller,
            agents,
        };
        wait_for(
            &c.api,
            "all healthy",
            Duration::from_secs(20),
            &c.log,
            |s| s.nodes.iter().all(|n| n.state == "healthy"),
        );
        (c, img)
    }

    fn kill_node(&self, i: usize) {
        std::fs::remove_file(self.lab.path(&format!("w{i}-up"))).unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.controller.kill();
        let _ = self.controller.wait();
    }
}

#[test]
fn an_agent_reporting_failed_is_retried_then_quarantined_until_an_operator_acts() {
    let c = Cluster::start(1, false, "retries = 1");
    c.kill_node(1);
    let s = wait_for(
        &c.api,
        "w1 quarantined",
        Duration::from_secs(60),
        &c.log,
        |s| state_of(s, "w1") == "quarantined",
    );
    let w1 = s.nodes.iter().find(|n| n.name == "w1").unwrap();
    let err = w1.last_error.as_deref().unwrap_or_default();
    assert!(err.contains("error 504") && err.contains("digest"), "{err}");
    assert!(
        s.alerts
            .iter()
            .any(|(_, n, m)| n.as_deref() == Some("w1") && m.contains("quarantined")),
        "{:?}",
        s.alerts
    );
    let plans: Vec<String> = ApiClient::unix(&c.api)
        .events(Some("w1"))
        .unwrap()
        .into_iter()
        .filter(|e| e.to == "recovering")
        .map(|e| e.reason)
        .collect();
    assert_eq!(
        plans.len(),
        2,
        "one plan and one retry: {plans:?}\n{}\n{}",
        std::fs::read_to_string(&c.log).unwrap_or_default(),
        std::fs::read_to_string(c.lab.path("w1-agent.log")).unwrap_or_default()
    );
    // The flag on w1's disk says FAILED with the stable code.
    let f = flag_json(&c.lab.path("w1-flag.img"));
    assert_eq!(
        (f["state"].as_str(), f["error_code"].as_u64()),
        (Some("failed"), Some(504))
    );
    // Quarantine holds; an operator releases the node.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        state_of(&ApiClient::unix(&c.api).status().unwrap(), "w1"),
        "quarantined"
    );
    let out = lazarus(&["release", "w1", "--api", &format!("unix:{}", c.api)]);
    assert!(out.status.success(), "{out:?}");
    wait_for(
        &c.api,
        "w1 released",
        Duration::from_secs(10),
        &c.log,
        |s| state_of(s, "w1") != "quarantined",
    );
    let out = lazarus(&["repair", "nope", "--api", &format!("unix:{}", c.api)]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn too_many_failures_at_once_pause_automatic_repair() {
    let c = Cluster::start(3, true, "max_unhealthy = 1\nmax_concurrent_repairs = 3");
    c.kill_node(1);
    c.kill_node(2);
    c.kill_node(3);
    let s = wait_for(&c.api, "paused", Duration::from_secs(30), &c.log, |s| {
        s.paused
    });
    assert!(
        s.alerts
            .iter()
            .any(|(_, _, m)| m.contains("automatic repair paused")),
        "{:?}",
        s.alerts
    );
    std::thread::sleep(Duration::from_secs(2));
    let s = ApiClient::unix(&c.api).status().unwrap();
    let started = s
        .nodes
        .iter()
        .filter(|n| !matches!(n.state.as_str(), "healthy" | "failing" | "queued"))
        .count();
    assert!(started <= 1, "repairs ran while paused: {s:?}");
    let metrics = ApiClient::unix(&c.api).get("/metrics").unwrap();
    assert!(
        metrics.contains("lazarus_nodes{state=\"queued\"}"),
        "{metrics}"
    );
}

#[test]
fn an_agent_unreachable_mid_recovery_is_waited_for_and_the_repair_completes() {
    let (c, img) = Cluster::start_with(1, true, "", true);
    c.kill_node(1);
    wait_for(
        &c.api,
        "w1 recovering",
        Duration::from_secs(30),
        &c.log,
        |s| state_of(s, "w1") == "recovering",
    );
    let mut feed = std::fs::OpenOptions::new()
        .write(true)
        .open(c.lab.export.join("images/worker.img"))
        .unwrap();
    std::io::Write::write_all(&mut feed, &img[..MIB]).unwrap();
    // The agent stops answering (SIGSTOP: its socket accepts, nothing replies).
    let pid = c.agents.pid();
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
    let s = wait_for(
        &c.api,
        "unreachable noted",
        Duration::from_secs(40),
        &c.log,
        |s| {
            s.nodes.iter().any(|n| {
                n.name == "w1"
                    && n.last_error
                        .as_deref()
                        .is_some_and(|e| e.contains("unreachable"))
            })
        },
    );
    assert_eq!(
        state_of(&s, "w1"),
        "recovering",
        "an unreachable agent is waited for, not abandoned"
    );
    rustix::process::kill_process(pid, rustix::process::Signal::CONT).unwrap();
    std::io::Write::write_all(&mut feed, &img[MIB..]).unwrap();
    drop(feed);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = ApiClient::unix(&c.api)
            .status()
            .map(|s| state_of(&s, "w1"))
            .unwrap_or_default();
        if st == "rebooting" || st == "verifying" {
            std::fs::write(c.lab.path("w1-up"), "").unwrap();
        }
        if st == "healthy" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "w1 stuck in {st}\n{}",
            std::fs::read_to_string(&c.log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(std::fs::read(c.lab.path("w1-disk.img")).unwrap()[..img.len()] == img[..]);
}
