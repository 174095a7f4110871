//! The Redfish provider against hostile BMCs: small HTTP servers on real sockets that play the
//! peers sushy-tools will not (a BMC that links to another host, hands out a task monitor or a
//! redirect elsewhere, accepts and never answers, stays busy or never powers off), and a BMC
//! password file that others can read. Each case asserts the safe outcome: nothing reaches the
//! other host, and every operation ends by its deadline with a one-line error.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazarus_controller::cluster::Cluster;
use lazarus_controller::provider::{self, Op};
use lazarus_controller::redfish::{Bmc, BmcOptions};

const SYSTEM: &str = "/redfish/v1/Systems/1";
const BUDGET: Duration = Duration::from_secs(30);

/// What a fake server answers.
struct Reply {
    status: u16,
    location: Option<String>,
    body: String,
}

fn json(status: u16, body: &str) -> Reply {
    Reply {
        status,
        location: None,
        body: body.into(),
    }
}

type Route = dyn Fn(&str, &str) -> Reply + Send + Sync;

/// What a fake server received: one `"METHOD PATH"` per request, with `" auth=VALUE"` if it
/// carried an `Authorization` header, and how many connections it accepted.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<String>>,
    connections: AtomicUsize,
}

impl Seen {
    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 server on `listener`, one request per connection, answering with `route`.
fn serve(listener: TcpListener, route: Arc<Route>) -> Arc<Seen> {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            s.connections.fetch_add(1, Ordering::SeqCst);
            let (s, route) = (s.clone(), route.clone());
            std::thread::spawn(move || answer(stream, &s, &*route));
        }
    });
    seen
}

fn answer(mut stream: TcpStream, seen: &Seen, route: &Route) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                // Not HTTP (a TLS hello, say), or gone: recorded as such.
                let text = String::from_utf8_lossy(&buf).into_owned();
                seen.requests
                    .lock()
                    .unwrap()
                    .push(format!("NOT-HTTP {text:?}"));
                return;
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
    let mut record = format!("{method} {path}");
    let mut length = 0usize;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim().to_ascii_lowercase().as_str() {
                "authorization" => record.push_str(&format!(" auth={}", value.trim())),
                "content-length" => length = value.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    while buf.len() < head_end + length {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    seen.requests.lock().unwrap().push(record);
    let reply = route(method, path);
    let location = reply
        .location
        .map(|l| format!("Location: {l}\r\n"))
        .unwrap_or_default();
    let _ = stream.write_all(
        format!(
            "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{location}Connection: close\r\n\r\n{}",
            reply.status,
            reply.body.len(),
            reply.body
        )
        .as_bytes(),
    );
}

fn listen(ip: &str, port: u16) -> TcpListener {
    TcpListener::bind((ip, port)).unwrap()
}

/// "Another host": a listener that answers anything and records what reached it.
fn elsewhere(ip: &str, port: u16) -> (SocketAddr, Arc<Seen>) {
    let l = listen(ip, port);
    let addr = l.local_addr().unwrap();
    (addr, serve(l, Arc::new(|_: &str, _: &str| json(200, "{}"))))
}

fn bmc_at(addr: SocketAddr) -> Bmc {
    Bmc::new(&BmcOptions {
        endpoint: format!("http://{addr}"),
        system: SYSTEM.into(),
        auth: Some(("lazarus".into(), "s3cret".into())),
        insecure_http: true,
        ..Default::default()
    })
    .unwrap()
}

/// A fake BMC whose system lists one virtual media collection; `member` is the link it gives for
/// the collection's one member (the CD), `monitor` the `Location` its InsertMedia answers with
/// (202), if any. A monitor on the BMC itself answers 202 once, then `final_task`.
fn fake_bmc(
    listener: TcpListener,
    member: Arc<Mutex<String>>,
    monitor: Option<String>,
    final_task: &'static str,
) -> Arc<Seen> {
    let polls = AtomicUsize::new(0);
    serve(
        listener,
        Arc::new(move |method: &str, path: &str| match (method, path) {
            ("GET", SYSTEM) => json(
                200,
                r#"{"PowerState":"On","VirtualMedia":{"@odata.id":"/redfish/v1/Systems/1/VirtualMedia"}}"#,
            ),
            ("GET", "/redfish/v1/Systems/1/VirtualMedia") => json(
                200,
                &format!(
                    r#"{{"Members":[{{"@odata.id":"{}"}}]}}"#,
                    member.lock().unwrap()
                ),
            ),
            ("GET", "/redfish/v1/Systems/1/VirtualMedia/Cd") => {
                json(200, r#"{"MediaTypes":["CD","DVD"]}"#)
            }
            ("POST", p) if p.ends_with("VirtualMedia.InsertMedia") => Reply {
                status: if monitor.is_some() { 202 } else { 204 },
                location: monitor.clone(),
                body: String::new(),
            },
            ("GET", "/redfish/v1/TaskMonitors/1") => {
                if polls.fetch_add(1, Ordering::SeqCst) == 0 {
                    json(202, r#"{"TaskState":"Running"}"#)
                } else {
                    json(200, final_task)
                }
            }
            ("POST", _) | ("PATCH", _) => json(204, ""),
            _ => json(404, r#"{"error":{"message":"no such resource"}}"#),
        }),
    )
}

#[test]
fn a_virtual_media_link_to_another_origin_is_refused_and_gets_no_credentials() {
    let bmc_listener = listen("127.0.0.1", 0);
    let bmc_addr = bmc_listener.local_addr().unwrap();
    // The same port on another host, another port on the same host.
    let (other_host, other_host_seen) = elsewhere("127.0.0.2", bmc_addr.port());
    let (other_port, other_port_seen) = elsewhere("127.0.0.1", 0);
    let cd = "/redfish/v1/Systems/1/VirtualMedia/Cd";
    let member = Arc::new(Mutex::new(String::new()));
    let seen = fake_bmc(bmc_listener, member.clone(), None, "");
    let bmc = bmc_at(bmc_addr);
    for link in [
        format!("http://{other_host}{cd}"),
        format!("http://{other_port}{cd}"),
        // Another scheme on the BMC's own host and port.
        format!("https://{bmc_addr}{cd}"),
        format!("//{other_port}{cd}"),
    ] {
        *member.lock().unwrap() = link.clone();
        let before = seen.requests().len();
        let err = bmc
            .within(BUDGET)
            .attach("http://127.0.0.1/rescue.iso")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("finding the virtual media")
                && err.contains(&link)
                && err.contains("not on the BMC's origin"),
            "{link}: {err}"
        );
        assert!(!err.contains('\n'), "{err}");
        // The BMC itself was asked for the system and the collection, nothing more (no TLS
        // hello for the https link), with the credentials.
        let requests = seen.requests()[before..].to_vec();
        assert_eq!(requests.len(), 2, "{link}: {requests:?}");
        assert!(
            requests.iter().all(|r| r.contains("auth=Basic ")),
            "{requests:?}"
        );
    }
    assert_eq!(
        other_host_seen.connections(),
        0,
        "{:?}",
        other_host_seen.requests()
    );
    assert_eq!(
        other_port_seen.connections(),
        0,
        "{:?}",
        other_port_seen.requests()
    );

    // A link to the BMC's own origin, written absolute, is followed.
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    let own = Arc::new(Mutex::new(format!("http://{addr}{cd}")));
    fake_bmc(listener, own, None, "");
    let found = bmc_at(addr).within(BUDGET).cd_device().unwrap();
    assert_eq!(found, format!("http://{addr}{cd}"));
}

#[test]
fn a_task_monitor_on_another_origin_is_never_polled() {
    let (other, other_seen) = elsewhere("127.0.0.1", 0);
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    let member = Arc::new(Mutex::new(
        "/redfish/v1/Systems/1/VirtualMedia/Cd".to_string(),
    ));
    let monitor = format!("http://{other}/redfish/v1/TaskMonitors/1");
    let seen = fake_bmc(listener, member.clone(), Some(monitor.clone()), "");
    let err = bmc_at(addr)
        .within(BUDGET)
        .attach("http://127.0.0.1/rescue.iso")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("inserting") && err.contains(&monitor) && err.contains("not followed"),
        "{err}"
    );
    assert_eq!(other_seen.connections(), 0, "{:?}", other_seen.requests());
    assert!(
        !seen.requests().iter().any(|r| r.contains("PATCH")),
        "no boot override after a refused insert: {:?}",
        seen.requests()
    );

    // A task monitor on the BMC itself is polled until the task ends.
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    let monitor = "/redfish/v1/TaskMonitors/1".to_string();
    let seen = fake_bmc(
        listener,
        member.clone(),
        Some(monitor.clone()),
        r#"{"TaskState":"Completed"}"#,
    );
    bmc_at(addr)
        .within(BUDGET)
        .attach("http://127.0.0.1/rescue.iso")
        .unwrap();
    let polls = seen.requests();
    assert_eq!(
        polls
            .iter()
            .filter(|r| r.starts_with("GET /redfish/v1/TaskMonitors/1"))
            .count(),
        2,
        "{polls:?}"
    );

    // A task that failed fails the insert.
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    fake_bmc(
        listener,
        member,
        Some(monitor),
        r#"{"TaskState":"Exception","Messages":[{"Message":"image not found"}]}"#,
    );
    let err = bmc_at(addr)
        .within(BUDGET)
        .attach("http://127.0.0.1/rescue.iso")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("inserting") && err.ends_with("ended Exception: image not found"),
        "{err}"
    );
}

#[test]
fn a_redirect_is_not_followed() {
    let (other, other_seen) = elsewhere("127.0.0.1", 0);
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    let target = format!("http://{other}{SYSTEM}");
    serve(
        listener,
        Arc::new(move |_: &str, _: &str| Reply {
            status: 302,
            location: Some(target.clone()),
            body: String::new(),
        }),
    );
    let err = bmc_at(addr)
        .within(BUDGET)
        .power_state()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 302 redirect") && err.contains(&other.to_string()),
        "{err}"
    );
    assert_eq!(other_seen.connections(), 0, "{:?}", other_seen.requests());
}

/// Runs `f` and checks it failed by 3 × `budget` (never flaky), not before `budget`.
fn fails_at_deadline(budget: Duration, f: impl FnOnce() -> String) -> String {
    let started = Instant::now();
    let err = f();
    let took = started.elapsed();
    assert!(
        took >= budget && took < budget * 3,
        "failed after {took:?}, deadline {budget:?}: {err}"
    );
    assert!(!err.contains('\n'), "{err}");
    err
}

#[test]
fn a_bmc_that_accepts_and_never_answers_fails_the_operation_at_its_deadline() {
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let c = connections.clone();
    std::thread::spawn(move || {
        // Accepted and held open, never read, never answered.
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            c.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    let bmc = bmc_at(addr);
    let budget = Duration::from_secs(2);
    let err = fails_at_deadline(budget, || {
        bmc.within(budget).power_off().unwrap_err().to_string()
    });
    assert!(
        err.contains("reading the power state")
            && err.contains("2s deadline passed")
            && err.contains("did not answer"),
        "{err}"
    );
    let err = fails_at_deadline(budget, || {
        bmc.within(budget)
            .attach("http://127.0.0.1/rescue.iso")
            .unwrap_err()
            .to_string()
    });
    assert!(err.contains("deadline passed"), "{err}");
    assert!(connections.load(Ordering::SeqCst) >= 2);
}

#[test]
fn a_bmc_that_trickles_its_answer_fails_the_operation_at_its_deadline() {
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
                );
                // One byte every 200 ms: each read is quick, the whole answer never ends.
                while stream.write_all(b" ").is_ok() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
        }
    });
    let budget = Duration::from_secs(2);
    let err = fails_at_deadline(budget, || {
        bmc_at(addr)
            .within(budget)
            .power_state()
            .unwrap_err()
            .to_string()
    });
    assert!(
        err.contains("2s deadline passed; reading the answer"),
        "{err}"
    );
}

#[test]
fn retries_and_polls_stop_at_the_operation_deadline() {
    let budget = Duration::from_secs(2);
    // Busy forever: five tries with backoff would take 15 s; the deadline stops them.
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    serve(listener, Arc::new(|_: &str, _: &str| json(503, "")));
    let err = fails_at_deadline(budget, || {
        bmc_at(addr)
            .within(budget)
            .power_state()
            .unwrap_err()
            .to_string()
    });
    assert!(
        err.contains("deadline passed") && err.ends_with("; last try: 503 (BMC busy)"),
        "{err}"
    );

    // Takes ForceOff and stays on: the wait for "Off" ends at the deadline.
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    serve(
        listener,
        Arc::new(|method: &str, _: &str| match method {
            "GET" => json(200, r#"{"PowerState":"On"}"#),
            _ => json(204, ""),
        }),
    );
    let err = fails_at_deadline(budget, || {
        bmc_at(addr)
            .within(budget)
            .power_off()
            .unwrap_err()
            .to_string()
    });
    assert!(
        err.contains(SYSTEM) && err.contains("still not off") && err.contains("2s deadline"),
        "{err}"
    );
}

/// The example cluster file, its node-1's Redfish BMC at `addr` (plain http) with the password
/// file `password` and no CA file: whatever else the example holds, it stays valid.
fn cluster_text(addr: SocketAddr, password: &std::path::Path) -> String {
    let example = include_str!("../../docs/cluster.example.toml");
    let mut text = example.to_string();
    for (from, to) in [
        (
            "endpoint = \"https://10.71.0.11\"".to_string(),
            format!("endpoint = \"http://{addr}\"\ninsecure_http = true"),
        ),
        (
            "password_file = \"/etc/lazarus/bmc-node-1.pass\"".to_string(),
            format!("password_file = \"{}\"", password.display()),
        ),
        (
            "ca_file = \"/etc/lazarus/bmc-ca.pem\"\n".to_string(),
            String::new(),
        ),
    ] {
        assert!(text.contains(&from), "the example has no {from:?}");
        text = text.replacen(&from, &to, 1);
    }
    text
}

/// [`cluster_text`], parsed.
fn cluster(addr: SocketAddr, password: &std::path::Path) -> Cluster {
    Cluster::parse(&cluster_text(addr, password), "cluster.toml").unwrap()
}

#[test]
fn a_password_file_others_can_read_is_refused_and_nothing_is_sent() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    let seen = serve(
        listener,
        Arc::new(|_: &str, _: &str| json(200, r#"{"PowerState":"Off"}"#)),
    );
    let password = dir.path().join("bmc.pass");
    std::fs::write(&password, "s3cret\n").unwrap();
    let c = cluster(addr, &password);
    let node = c.node("node-1").unwrap();

    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&password, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = provider::run(node, Op::PowerOff, BUDGET, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&password.display().to_string())
                && err.contains(&format!("mode {mode:04o}"))
                && err.contains("chmod 600")
                && !err.contains('\n'),
            "{err}"
        );
    }
    assert_eq!(seen.connections(), 0, "{:?}", seen.requests());

    // Not a regular file: a directory, a FIFO (which must not hang the open).
    for (name, make) in [
        (
            "dir.pass",
            Box::new(|p: &std::path::Path| std::fs::create_dir(p).unwrap())
                as Box<dyn Fn(&std::path::Path)>,
        ),
        (
            "fifo.pass",
            Box::new(|p: &std::path::Path| {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    p,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap()
            }),
        ),
    ] {
        let path = dir.path().join(name);
        make(&path);
        let c = cluster(addr, &path);
        let err = provider::run(c.node("node-1").unwrap(), Op::PowerOff, BUDGET, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(name) && err.contains("not a regular file"),
            "{err}"
        );
    }
    assert_eq!(seen.connections(), 0, "{:?}", seen.requests());

    // 0600: used, and the BMC (only it) gets the credentials.
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o600)).unwrap();
    provider::run(node, Op::PowerOff, BUDGET, &[]).unwrap();
    // RFC 7617: base64 of "lazarus:s3cret".
    assert_eq!(
        seen.requests(),
        vec![format!("GET {SYSTEM} auth=Basic bGF6YXJ1czpzM2NyZXQ=")]
    );
}

#[test]
fn serve_refuses_to_start_with_a_password_file_others_can_read() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("bmc.pass");
    std::fs::write(&password, "s3cret\n").unwrap();
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).unwrap();
    let listener = listen("127.0.0.1", 0);
    let addr = listener.local_addr().unwrap();
    let seen = serve(listener, Arc::new(|_: &str, _: &str| json(200, "{}")));
    let config = dir.path().join("cluster.toml");
    std::fs::write(&config, cluster_text(addr, &password)).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("node node-1")
            && stderr.contains(&password.display().to_string())
            && stderr.contains("mode 0644"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert_eq!(seen.connections(), 0);
}
