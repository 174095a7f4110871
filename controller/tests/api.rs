//! The controller's API against hostile clients, on a real `lazarus serve` with its Unix socket
//! and a TCP listener with a token: each case asserts the safe outcome (refused, closed, memory
//! flat, the operator still served), never a speed.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use lazarus_controller::api_client::ApiClient;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";
/// Where w1's "agent" answers when `/api/logs/w1` asks (its rescue address, agent port).
const W1_RESCUE: &str = "127.0.77.177";
/// A generous bound for what should take well under a second.
const FEW_SECONDS: Duration = Duration::from_secs(10);

/// `lazarus serve` with the API on a socket and on TCP, killed by its pid when the test ends.
struct Daemon {
    child: Child,
    socket: PathBuf,
    tcp: String,
    token_file: PathBuf,
    log: PathBuf,
    lab: Option<Lab>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Daemon {
    fn start() -> Self {
        let lab = Lab::new();
        let token_file = lab.path("api.token");
        write_private(&token_file, TOKEN);
        let tcp = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        let socket = lab.path("run/api.sock");
        let config = cluster_file(
            &lab,
            &format!(
                "api = {{ socket = \"{}\", group = \"{}\", listen = \"{tcp}\", \
                 token_file = \"{}\" }}",
                socket.display(),
                socket_gid(),
                token_file.display()
            ),
        );
        let log = lab.path("controller.log");
        let child = serve(&config, &lab.path("data"), &log);
        let d = Self {
            child,
            socket,
            tcp,
            token_file,
            log,
            lab: Some(lab),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ApiClient::unix(&d.socket).status().is_err() {
            assert!(Instant::now() < deadline, "no API: {}", d.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    /// Kills the daemon as a crash would (SIGKILL, nothing cleaned up); its folder stays.
    fn crash(mut self) -> Lab {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.lab.take().unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn unix_api(&self) -> String {
        format!("unix:{}", self.socket.display())
    }

    /// `lazarus ARGS --api unix:SOCKET`.
    fn cli_unix(&self, args: &[&str]) -> Output {
        let api = self.unix_api();
        lazarus(&[args, &["--api", &api]].concat())
    }

    /// `lazarus ARGS --api http://TCP --token-file FILE`.
    fn cli_tcp(&self, args: &[&str]) -> Output {
        let api = format!("http://{}", self.tcp);
        let token = self.token_file.display().to_string();
        lazarus(&[args, &["--api", &api, "--token-file", &token]].concat())
    }

    /// The daemon's resident memory, KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    /// The daemon's open file descriptors.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    /// The state of `node` as the API shows it.
    fn state(&self, node: &str) -> String {
        let s = ApiClient::unix(&self.socket).status().unwrap();
        s.nodes.into_iter().find(|n| n.name == node).unwrap().state
    }
}

/// The group the tests give the socket: one this process does not belong to when it can (root
/// may give any), else its own.
fn socket_gid() -> u32 {
    if is_root() {
        4242
    } else {
        rustix::process::getegid().as_raw()
    }
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// A cluster of two healthy nodes (w1, s1) with `api` in `[controller]`.
fn cluster_file(lab: &Lab, api: &str) -> PathBuf {
    let ready = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    two_node_cluster(
        lab,
        &format!("{api}\nready = \"{ready}\""),
        [W1_RESCUE, "127.0.77.178"],
    )
}

/// Sends `request` (which asks to close the connection) and returns the status code and body.
fn exchange(mut s: impl Read + Write, request: &str) -> (u16, String) {
    s.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let code = answer
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

fn tcp(d: &Daemon, request: &str) -> (u16, String) {
    exchange(TcpStream::connect(&d.tcp).unwrap(), request)
}

fn unix(d: &Daemon, request: &str) -> (u16, String) {
    exchange(UnixStream::connect(&d.socket).unwrap(), request)
}

/// A request with `headers` (each ending in CRLF) that closes its connection.
fn request(method: &str, path: &str, headers: &str) -> String {
    format!("{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n")
}

fn assert_error(answer: &(u16, String), code: u16, words: &str) {
    assert_eq!(answer.0, code, "{answer:?}");
    let body: serde_json::Value = serde_json::from_str(&answer.1).unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(error.contains(words) && !error.contains('\n'), "{answer:?}");
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_socket_is_0660_and_tcp_answers_nothing_without_the_token() {
    let d = Daemon::start();
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o660, "socket mode {:o}", meta.mode());
    assert_eq!(meta.gid(), socket_gid(), "the socket's group");
    assert!(ok(&d.cli_unix(&["status"])).contains("w1"));
    assert!(ok(&d.cli_tcp(&["status"])).contains("w1"));

    let host = format!("Host: {}\r\n", d.tcp);
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    for path in ["/api/status", "/metrics", "/api/events", "/api/logs/w1"] {
        assert_error(&tcp(&d, &request("GET", path, &host)), 401, "Bearer");
        let wrong = format!("{host}Authorization: Bearer {}\r\n", "x".repeat(48));
        assert_error(&tcp(&d, &request("GET", path, &wrong)), 401, "Bearer");
    }
    let json = "Content-Type: application/json\r\n";
    assert_error(
        &tcp(
            &d,
            &request(
                "POST",
                "/api/repair/w1?force=true",
                &format!("{host}{json}"),
            ),
        ),
        401,
        "Bearer",
    );
    let (code, body) = tcp(&d, &request("GET", "/metrics", &format!("{host}{bearer}")));
    assert_eq!(code, 200, "{body}");

    // The CLI refuses an http:// API without a token before sending anything.
    let out = lazarus(&["status", "--api", &format!("http://{}", d.tcp)]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--token-file") && err.lines().count() == 1,
        "{err}"
    );
    // A token file others can read is refused by the CLI too.
    std::fs::set_permissions(&d.token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = d.cli_tcp(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{out:?}"
    );
    assert_eq!(d.state("w1"), "healthy");
}

#[test]
fn a_foreign_host_or_origin_is_refused() {
    let d = Daemon::start();
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let json = "Content-Type: application/json\r\n";
    let repair = "/api/repair/w1?force=true";
    // DNS rebinding: the right token cannot come from a page, but a page's Host never is ours.
    let evil = format!(
        "Host: evil.example:{}\r\n{bearer}",
        d.tcp.split(':').nth(1).unwrap()
    );
    assert_error(&tcp(&d, &request("GET", "/api/status", &evil)), 403, "Host");
    assert_error(
        &tcp(&d, &request("POST", repair, &format!("{evil}{json}"))),
        403,
        "Host",
    );
    let host = format!("Host: {}\r\n{bearer}", d.tcp);
    let origin = "Origin: http://evil.example\r\n";
    assert_error(
        &tcp(
            &d,
            &request("POST", repair, &format!("{host}{json}{origin}")),
        ),
        403,
        "origin",
    );
    // The socket: no web origin, and Host localhost only.
    assert_error(
        &unix(
            &d,
            &request(
                "POST",
                repair,
                &format!("Host: localhost\r\n{json}{origin}"),
            ),
        ),
        403,
        "origin",
    );
    assert_error(
        &unix(
            &d,
            &request("POST", repair, &format!("Host: evil.example\r\n{json}")),
        ),
        403,
        "Host",
    );
    // Same origin is fine (409: w1 is healthy, nothing to release; it got past the guard).
    let same = format!("{host}{json}Origin: http://{}\r\n", d.tcp);
    assert_error(
        &tcp(&d, &request("POST", "/api/release/w1", &same)),
        409,
        "w1",
    );
    assert_eq!(d.state("w1"), "healthy", "no refused request repaired w1");
}

#[test]
fn a_post_without_a_json_content_type_is_415() {
    let d = Daemon::start();
    let host = format!("Host: {}\r\nAuthorization: Bearer {TOKEN}\r\n", d.tcp);
    let repair = "/api/repair/w1?force=true";
    for ct in [
        "",
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
        "Content-Type: multipart/form-data; boundary=x\r\n",
    ] {
        assert_error(
            &tcp(&d, &request("POST", repair, &format!("{host}{ct}"))),
            415,
            "application/json",
        );
        assert_error(
            &unix(
                &d,
                &request("POST", repair, &format!("Host: localhost\r\n{ct}")),
            ),
            415,
            "application/json",
        );
    }
    assert_eq!(d.state("w1"), "healthy", "no refused request repaired w1");
    // The CLI's POSTs pass (409 is the state machine's refusal, one line).
    let out = d.cli_unix(&["release", "w1"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HTTP 409") && err.lines().count() == 1,
        "{err}"
    );
    let out = d.cli_tcp(&["release", "w1"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HTTP 409"),
        "{out:?}"
    );
}

#[test]
fn a_one_gigabyte_header_line_is_cut_off_and_memory_stays_flat() {
    let d = Daemon::start();
    let before = d.rss_kib();
    let mut s = TcpStream::connect(&d.tcp).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(format!("GET /api/status HTTP/1.1\r\nHost: {}\r\nX-Big: ", d.tcp).as_bytes())
        .unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    let refused = loop {
        if sent >= 1 << 30 {
            break None;
        }
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    let e = refused.unwrap_or_else(|| panic!("the server took a 1 GiB header line"));
    eprintln!(
        "header line cut off after {} KiB sent ({e}); daemon RSS {before} KiB before, {} KiB after",
        sent >> 10,
        d.rss_kib()
    );
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{e}"
    );
    let after = d.rss_kib();
    assert!(
        after < before + 32 * 1024,
        "daemon RSS grew from {before} KiB to {after} KiB"
    );
    assert!(ok(&d.cli_tcp(&["status"])).contains("w1"));
}

/// Raises this process's open-file limit to at least `want` (the daemon, its child, inherits it).
fn raise_nofile(want: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    let hard = l.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= want,
        "the hard limit of open files is {hard}, below {want}"
    );
    if l.current.is_some_and(|c| c < want) {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(want),
                maximum: l.maximum,
            },
        )
        .unwrap();
    }
}

#[test]
fn five_thousand_idle_connections_leave_the_operator_served() {
    const IDLE: usize = 5000;
    raise_nofile(IDLE as u64 + 1024);
    let d = Daemon::start();
    let (tx, rx) = mpsc::channel();
    let addr = d.tcp.clone();
    // The flood opens and holds its connections while the operator asks.
    let flood = std::thread::spawn(move || {
        let mut held = Vec::with_capacity(IDLE);
        let mut failed = 0;
        for i in 0..IDLE {
            match TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(5)) {
                Ok(s) => held.push(s),
                Err(_) => failed += 1,
            }
            if i == IDLE / 2 {
                let _ = tx.send(());
            }
        }
        (held, failed)
    });
    rx.recv().unwrap();
    for _ in 0..3 {
        let start = Instant::now();
        assert!(ok(&d.cli_tcp(&["status"])).contains("w1"));
        assert!(ok(&d.cli_unix(&["status"])).contains("w1"));
        assert!(start.elapsed() < FEW_SECONDS, "{:?}", start.elapsed());
    }
    let (held, failed) = flood.join().unwrap();
    // Connections closed for newer ones end on the server's next turns: let it settle a moment.
    let settle = Instant::now() + Duration::from_secs(5);
    let mut fds = d.fds();
    while fds >= 300 && Instant::now() < settle {
        std::thread::sleep(Duration::from_millis(100));
        fds = d.fds();
    }
    eprintln!(
        "{} idle connections opened ({failed} failed); the daemon holds {fds} descriptors",
        held.len()
    );
    assert!(held.len() + failed == IDLE);
    // The daemon keeps a bounded number (256 connections per listener), not one per socket.
    assert!(fds < 512, "daemon holds {fds} descriptors");
    let start = Instant::now();
    assert!(ok(&d.cli_tcp(&["status"])).contains("w1"));
    let took = start.elapsed();
    eprintln!(
        "lazarus status over TCP with {} connections held: {took:?}",
        held.len()
    );
    assert!(took < FEW_SECONDS, "{took:?}");
    drop(held);
}

#[test]
fn a_client_that_never_reads_is_dropped_while_others_are_served() {
    let d = Daemon::start();
    let before = d.rss_kib();
    let mut s = TcpStream::connect(&d.tcp).unwrap();
    let one = format!(
        "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
        d.tcp
    );
    // Far more answers than socket buffers hold; this side reads none of them.
    const REQUESTS: usize = 50_000;
    let mut writer = s.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let started = Instant::now();
        for i in 0..REQUESTS {
            if let Err(e) = writer.write_all(one.as_bytes()) {
                return (i, Some(e), started.elapsed());
            }
        }
        (REQUESTS, None, started.elapsed())
    });
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    assert!(ok(&d.cli_tcp(&["status"])).contains("w1"));
    assert!(ok(&d.cli_unix(&["status"])).contains("w1"));
    assert!(start.elapsed() < FEW_SECONDS, "{:?}", start.elapsed());
    let during = d.rss_kib();
    let (sent, error, took) = sender.join().unwrap();
    eprintln!(
        "the stalled client sent {sent} requests before {error:?}, after {took:?}; daemon RSS \
         {before} KiB before, {during} KiB while it stalled"
    );
    assert!(
        during < before + 32 * 1024,
        "daemon RSS grew from {before} KiB to {during} KiB"
    );
    assert!(
        error.is_some() && sent < REQUESTS,
        "the server kept a client that reads nothing ({sent} requests)"
    );
    // Its connection is closed: what is left to read ends.
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut sink = Vec::new();
    let end = s.read_to_end(&mut sink);
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
}

#[test]
fn a_slow_agent_log_does_not_hold_up_status() {
    // w1's "agent" accepts and never answers.
    let agent = TcpListener::bind((W1_RESCUE, lazarus_proto::AGENT_PORT)).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in agent.incoming().flatten() {
            held.push(s);
            let _ = tx.send(());
        }
    });
    let d = Daemon::start();
    let bin = env!("CARGO_BIN_EXE_lazarus");
    let logs = || {
        Command::new(bin)
            .args(["logs", "w1", "--api", &d.unix_api()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = logs();
    rx.recv_timeout(FEW_SECONDS)
        .expect("the API never called the agent");
    for _ in 0..3 {
        let start = Instant::now();
        assert!(ok(&d.cli_unix(&["status"])).contains("w1"));
        ok(&d.cli_tcp(&["events"]));
        assert!(start.elapsed() < FEW_SECONDS, "{:?}", start.elapsed());
    }
    // More log calls than their budget: the surplus is told so at once, status still answers.
    let more: Vec<Child> = (0..5).map(|_| logs()).collect();
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    assert!(ok(&d.cli_unix(&["status"])).contains("w1"));
    assert!(start.elapsed() < FEW_SECONDS, "{:?}", start.elapsed());
    let outs: Vec<Output> = std::iter::once(first)
        .chain(more)
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let busy = outs
        .iter()
        .filter(|o| String::from_utf8_lossy(&o.stderr).contains("HTTP 503"))
        .count();
    for o in &outs {
        // Each ends, with one line saying why (the agent never answered, or the budget is spent).
        assert_eq!(o.status.code(), Some(2), "{o:?}");
        assert_eq!(
            String::from_utf8_lossy(&o.stderr).lines().count(),
            1,
            "{o:?}"
        );
    }
    assert!(busy >= 1, "six log calls at once, none refused: {outs:?}");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let d = Daemon::start();
    // A second daemon on the same socket (its own Ready port and data) is refused at start.
    let lab = Lab::new();
    let config = cluster_file(
        &lab,
        &format!("api = {{ socket = \"{}\" }}", d.socket.display()),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(lab.path("data"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("another controller is serving"), "{err}");
    assert!(
        ok(&d.cli_unix(&["status"])).contains("w1"),
        "the first one still serves"
    );
    // Killed without cleaning up, the first leaves its socket file; the next start replaces it.
    let socket = d.socket.clone();
    let _first = d.crash();
    assert!(socket.exists());
    let log = lab.path("second.log");
    let mut second = serve(&config, &lab.path("data"), &log);
    let deadline = Instant::now() + Duration::from_secs(20);
    while ApiClient::unix(&socket).status().is_err() {
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!(
                "no API: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = second.kill();
    let _ = second.wait();
}

#[test]
fn tcp_without_a_private_token_file_is_refused_at_start() {
    let lab = Lab::new();
    let tcp = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let socket = lab.path("api.sock");
    let token = lab.path("api.token");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o640)).unwrap();
    let cases = [
        (format!("listen = \"{tcp}\""), "token_file"),
        (
            format!("listen = \"{tcp}\", token_file = \"{}\"", token.display()),
            "chmod 600",
        ),
        (
            format!(
                "listen = \"{tcp}\", token_file = \"{}\"",
                lab.path("none").display()
            ),
            "No such file",
        ),
    ];
    for (api, words) in cases {
        let config = cluster_file(
            &lab,
            &format!("api = {{ socket = \"{}\", {api} }}", socket.display()),
        );
        let out = lazarus(&[
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            lab.path("data").to_str().unwrap(),
        ]);
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or_default();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(last.contains(words), "{api}: {err}");
        assert!(
            TcpStream::connect(&tcp).is_err(),
            "{api}: something listens on {tcp}"
        );
    }
}

#[test]
fn a_request_head_trickled_a_byte_at_a_time_is_cut_off() {
    let d = Daemon::start();
    let mut s = TcpStream::connect(&d.tcp).unwrap();
    s.write_all(format!("GET /api/status HTTP/1.1\r\nHost: {}\r\nX-Slow: ", d.tcp).as_bytes())
        .unwrap();
    s.set_nonblocking(true).unwrap();
    let start = Instant::now();
    // A byte every half second, for up to two minutes: far past the server's head deadline.
    let closed = (0..240).find_map(|_| {
        std::thread::sleep(Duration::from_millis(500));
        let mut buf = [0; 512];
        match s.read(&mut buf) {
            Ok(0) => return Some("closed"),
            Ok(_) => return Some("answered and closed"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return Some("reset"),
        }
        s.write_all(b"a").err().map(|_| "reset")
    });
    eprintln!("trickled head: {closed:?} after {:?}", start.elapsed());
    assert!(
        closed.is_some(),
        "a head trickled for two minutes was still being read"
    );
    assert!(ok(&d.cli_tcp(&["status"])).contains("w1"));
}
