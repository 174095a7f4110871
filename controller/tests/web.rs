//! The web view in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol, against a real `lazarus serve` (TCP listener with a bearer token) repairing w1 with
//! a real host-mode agent. The page must list the nodes, show the repair's progress move as the
//! image is fed, and draw the finished repair's timeline with an SVG bar per step; the CLI must
//! show the same steps from the same API. Also: the socket reached through a forward, the static
//! files served without the token but no fact, and text from the cluster shown as text, never
//! as markup.

mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::repair_lab::{RepairLab, MIB, TOKEN};
use common::*;
use lazarus_controller::api::{RepairOutcome, StepOutcome};
use lazarus_controller::api_client::ApiClient;
use lazarus_testkit::Reaped;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

const CHROMIUM: &str = "chromium";

/// A headless Chromium with one page, spoken to over the DevTools protocol (JSON over a
/// WebSocket, one session attached to the page). Killed with its process group on drop.
struct Browser {
    ws: WebSocket<TcpStream>,
    next: u64,
    session: String,
    /// Events received while waiting for answers (console, exceptions).
    events: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    _process: Reaped,
}

impl Browser {
    /// Starts Chromium with a fresh profile in `dir` and attaches to its page.
    fn launch(dir: &Path) -> Self {
        let mut process = Reaped::default();
        let child = process.push(
            Command::new(CHROMIUM)
                .args([
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--remote-debugging-address=127.0.0.1",
                    "--remote-debugging-port=0",
                ])
                .arg(format!("--user-data-dir={}", dir.display()))
                .arg("about:blank")
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .process_group(0)
                .spawn()
                .expect("starting chromium"),
        );
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let (pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| {
                panic!(
                    "chromium gave no DevTools address: {}",
                    stderr.lock().unwrap()
                )
            });
        let host = url
            .strip_prefix("ws://")
            .and_then(|u| u.split('/').next())
            .unwrap()
            .to_string();
        let stream = TcpStream::connect(&host).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (ws, _) = tungstenite::client(url.as_str(), stream).expect("DevTools handshake");
        // From now on reads wait at most this long, so every wait below keeps its own deadline.
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut b = Self {
            ws,
            next: 0,
            session: String::new(),
            events: Vec::new(),
            stderr,
            _process: process,
        };
        let targets = b.call("Target.getTargets", json!({}));
        let page = targets["targetInfos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .map(|t| t["targetId"].clone())
            .unwrap_or_else(|| {
                b.call("Target.createTarget", json!({"url": "about:blank"}))["targetId"].clone()
            });
        let attached = b.call(
            "Target.attachToTarget",
            json!({"targetId": page, "flatten": true}),
        );
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Runtime.enable", json!({}));
        b.call("Log.enable", json!({}));
        b.call("Page.enable", json!({}));
        b
    }

    /// Sends `method` (to the page's session once attached) and returns its result.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws.send(Message::text(msg.to_string())).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(
                Instant::now() < deadline,
                "DevTools: no answer to {method}\n{}",
                self.stderr.lock().unwrap()
            );
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t,
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => panic!("DevTools connection: {e}"),
            };
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    panic!("DevTools {method}: {e}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.events.push(v);
            }
        }
    }

    /// The value of the JavaScript expression `expr` in the page (promises awaited).
    fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
        );
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expr}: {e}");
        }
        r["result"]["value"].clone()
    }

    /// Evaluates `expr` until it is neither null nor false; returns that value.
    fn wait(&mut self, r: &RepairLab, what: &str, expr: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.eval(expr);
            if !v.is_null() && v != json!(false) {
                return v;
            }
            if Instant::now() > deadline {
                let page = self.eval("document.body.innerText");
                panic!(
                    "the page never showed {what}; it shows:\n{}\n{}",
                    page.as_str().unwrap_or_default(),
                    r.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the element at `selector` shows exactly `text`; returns what it shows.
    fn wait_text(&mut self, r: &RepairLab, what: &str, selector: &str, text: &str) -> Value {
        self.wait(
            r,
            what,
            &format!(
                "(() => {{ const c = document.querySelector({selector:?}); return c && c.textContent === {text:?} ? c.textContent : null }})()"
            ),
        )
    }

    /// With `LAZARUS_WEB_SCREENSHOTS=DIR`, saves what the page shows as `DIR/NAME.png` (to look
    /// at the pictures a passing test saw).
    fn screenshot(&mut self, name: &str) {
        let Some(dir) = std::env::var_os("LAZARUS_WEB_SCREENSHOTS") else {
            return;
        };
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": 1100, "height": 700, "deviceScaleFactor": 1, "mobile": false}),
        );
        let shot = self.call("Page.captureScreenshot", json!({"format": "png"}));
        let png = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            shot["data"].as_str().unwrap(),
        )
        .unwrap();
        std::fs::write(Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }

    /// Script errors and console errors the page reported, except failed requests (the test
    /// makes one on purpose).
    fn errors(&self) -> Vec<Value> {
        self.events
            .iter()
            .filter(|e| {
                e["method"] == "Runtime.exceptionThrown"
                    || (e["method"] == "Log.entryAdded"
                        && e["params"]["entry"]["level"] == "error"
                        && e["params"]["entry"]["source"] != "network")
                    || (e["method"] == "Runtime.consoleAPICalled" && e["params"]["type"] == "error")
            })
            .cloned()
            .collect()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask politely first; the process group is killed anyway when `_process` drops.
        let _ = self.ws.send(Message::text(
            json!({"id": 0, "method": "Browser.close"}).to_string(),
        ));
    }
}

/// The cells of w1's row in the node list, if it is shown.
const W1_ROW: &str = r#"(() => {
    const tr = document.querySelector('#nodes tr[data-node="w1"]');
    if (!tr) return null;
    const p = tr.querySelector('progress');
    return { role: tr.children[1].textContent, state: tr.children[2].textContent,
             step: tr.children[3].textContent, progressText: tr.children[4].textContent,
             value: p ? p.value : null, max: p ? p.max : null };
})()"#;

/// A script giving the node list's rows (their first `columns` cells' text) once both nodes are
/// listed, `null` before.
fn node_rows(columns: usize) -> String {
    format!(
        r#"(() => {{
            const rows = [...document.querySelectorAll('#nodes tbody tr')].map(tr =>
                [...tr.children].slice(0, {columns}).map(td => td.textContent));
            return rows.length === 2 ? rows : null;
        }})()"#
    )
}
/// Whether Debian's Chromium is here for `test` (without it the test is skipped, which fails
/// it under `LAZARUS_REQUIRE_ALL`).
fn have_chromium(test: &str) -> bool {
    lazarus_testkit::require(
        test,
        lazarus_testkit::program(
            CHROMIUM,
            "Debian package chromium; scripts/test installs it",
        ),
    )
}

#[test]
fn the_web_view_lists_the_nodes_shows_a_repair_move_and_draws_its_timeline() {
    if !have_chromium("the_web_view_lists_the_nodes_shows_a_repair_move_and_draws_its_timeline") {
        return;
    }
    // A differential copy: the page shows the agent's counters of checked, fetched and
    // written bytes beside the bar.
    let mut r = RepairLab::start_differential(201, true);
    let (tcp, token_file) = r.tcp.clone().unwrap();
    let mut b = Browser::launch(&r.lab.path("chromium-profile"));
    let started = Instant::now();

    // The operator opens the address with the token in its fragment.
    b.call(
        "Page.navigate",
        json!({"url": format!("http://{tcp}/#token={TOKEN}")}),
    );
    let rows = b.wait(&r, "both nodes", &node_rows(4));
    assert_eq!(
        rows,
        json!([
            ["s1", "standby", "healthy", "–"],
            ["w1", "worker", "healthy", "–"]
        ])
    );
    // The token left the address bar at once; the page's own origin gets nothing without it.
    assert_eq!(b.eval("location.href"), json!(format!("http://{tcp}/#/")));
    assert_eq!(
        b.eval("fetch('api/status').then(r => r.status)"),
        json!(401)
    );
    assert_eq!(
        b.eval("fetch('api/status', {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('lazarus-api-token')}}).then(r => r.status)"),
        json!(200)
    );
    assert_eq!(b.eval("document.cookie"), json!(""));

    // w1 fails; the page follows its repair. Its disk holds chunks 0 and 2 already (half the
    // bar at once, once read back); a quarter of the stream, then three quarters (chunk 1
    // fetched and written): the progress bar in w1's row moves with each, without a reload.
    b.eval("window.loadedOnce = true");
    r.kill_worker();
    b.wait(
        &r,
        "w1 recovering",
        &format!("(() => {{ const w = {W1_ROW}; return w && w.step.startsWith('recovering') }})()"),
    );
    r.feed(4 * MIB);
    let first = b.wait(
        &r,
        "w1's progress bar moving",
        &format!("(() => {{ const w = {W1_ROW}; return w && w.value > 0 ? w : null }})()"),
    );
    r.feed(8 * MIB);
    let before = first["value"].as_f64().unwrap();
    // Chunks 0 and 2 matched, chunk 1 written; chunk 3 waits for the rest of the stream.
    let held = 12 * MIB;
    let second = b.wait(
        &r,
        "w1's progress bar further on",
        &format!("(() => {{ const w = {W1_ROW}; return w && w.value > {before} && w.value === {held} ? w : null }})()"),
    );
    let max = second["max"].as_f64().unwrap();
    assert_eq!(max, r.image.len() as f64, "{second}");
    assert!(second["value"].as_f64().unwrap() < max, "{second}");
    assert_eq!(second["state"], "under repair");
    assert_eq!(second["role"], "standby", "s1 took w1's place: {second}");
    let api_w1 = r.node("w1");
    assert_eq!(
        (api_w1.bytes_done as f64, api_w1.bytes_total as f64),
        (second["value"].as_f64().unwrap(), max),
        "the page shows what the API says"
    );
    assert!(
        second["progressText"].as_str().unwrap().contains("% · "),
        "{second}"
    );
    // Under the bar, the copy counters the agent reports: the whole disk checked, all of the
    // stream fed so far fetched (12 MiB, compressed), chunk 1 written; as text, as `lazarus
    // status` says them.
    let copy = r.settled_copy("the differential copy's counters", |c| c.written > 0);
    let chunk = 4 * MIB as u64;
    assert_eq!(
        (copy.checked, copy.fetched, copy.written),
        (4 * chunk, 3 * chunk, chunk)
    );
    let summary = lazarus_controller::api_client::copy_summary(&copy).unwrap();
    assert_eq!(
        summary,
        "checked 16.0 MiB, fetched 12.0 MiB, written 4.0 MiB"
    );
    let shown = b.wait_text(
        &r,
        "w1's copy counters in the list",
        "#nodes tr[data-node=\"w1\"] .copy",
        &summary,
    );
    assert_eq!(shown, json!(summary));
    b.screenshot("list-recovering");
    assert_eq!(
        b.eval("window.loadedOnce"),
        json!(true),
        "the page reloaded"
    );

    // The node's page while it writes: the running step is drawn, with its bytes.
    b.eval("location.hash = '#/node/w1'");
    b.wait(
        &r,
        "the running recovering step",
        r#"document.querySelector('section.repair[data-outcome="running"] svg rect.step[data-step="recovering"][data-outcome="running"]') !== null
           && document.querySelector('section.repair svg rect.bytes') !== null"#,
    );
    let shown = b.wait(
        &r,
        "w1's copy counters on its page",
        "document.querySelector('#node-progress .copy')?.textContent || null",
    );
    assert_eq!(shown, json!(summary));
    // `lazarus status w1` says the same under w1's row.
    let out = lazarus(&[
        "status",
        "w1",
        "--api",
        &format!("http://{tcp}"),
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().nth(2),
        Some(format!("{:<12} copy: {summary}", "").as_str()),
        "{text}"
    );
    b.screenshot("node-recovering");
    // The stream stays silent: once the agent reports the source stalled (after 10 s), the
    // page says since when, as the CLI does.
    let stalled = r.settled_copy("the stalled source", |c| c.source_stalled_since.is_some());
    let said = lazarus_controller::api_client::copy_summary(&stalled).unwrap();
    assert!(
        said.starts_with(&format!("{summary}; source stalled since ")),
        "{said}"
    );
    let shown = b.wait_text(
        &r,
        "the stalled source on w1's page",
        "#node-progress .copy.stalled",
        &said,
    );
    assert_eq!(shown, json!(said));
    b.screenshot("node-stalled");

    // The repair ends; the page (still open, never reloaded) draws the whole timeline.
    r.finish();
    let client = ApiClient::from_args(&format!("http://{tcp}"), Some(&token_file)).unwrap();
    let detail = client.node("w1").unwrap();
    let repair = detail.repairs.last().unwrap();
    assert_eq!(repair.outcome, RepairOutcome::Restored, "{detail:?}");
    let want: Vec<Value> = repair
        .steps
        .iter()
        .map(|s| json!([s.step.name(), s.outcome.name()]))
        .collect();
    let drawn = b.wait(
        &r,
        "the restored repair's timeline",
        r#"(() => {
            const s = document.querySelector('section.repair[data-outcome="restored"]');
            return s && [...s.querySelectorAll('svg rect.step')].map(r => [r.dataset.step, r.dataset.outcome]);
        })()"#,
    );
    assert_eq!(
        drawn,
        json!(want),
        "one SVG bar per step, as the API lists them"
    );
    b.screenshot("node-restored");
    let names: Vec<&str> = repair.steps.iter().map(|s| s.step.name()).collect();
    // waiting_ready may be skipped: a fast agent announces Ready before attach returns.
    for step in [
        "queued",
        "fencing",
        "attaching",
        "recovering",
        "detaching",
        "rebooting",
        "verifying",
    ] {
        assert!(names.contains(&step), "{step} missing from {names:?}");
    }
    assert!(repair.steps.iter().all(|s| s.outcome == StepOutcome::Done));
    let recovering = repair
        .steps
        .iter()
        .find(|s| s.step.name() == "recovering")
        .unwrap();
    assert_eq!(
        (recovering.bytes_done, recovering.bytes_total),
        (r.image.len() as u64, r.image.len() as u64)
    );
    let row = b.eval(
        r#"[...document.querySelector('section.repair[data-outcome="restored"] tr[data-step="recovering"]').children].map(td => td.textContent)"#,
    );
    assert_eq!(row[3], "16.0 MiB of 16.0 MiB", "{row}");
    assert_eq!(row[4], "done", "{row}");
    let labels = b.eval(
        r#"[...document.querySelectorAll('section.repair[data-outcome="restored"] svg text')].map(t => t.textContent)"#,
    );
    for step in &names {
        assert!(
            labels.as_array().unwrap().iter().any(|l| l == step),
            "no label {step}: {labels}"
        );
    }
    assert_eq!(
        b.eval("window.loadedOnce"),
        json!(true),
        "the page reloaded"
    );

    // `lazarus status w1` shows the same steps from the same API.
    let out = lazarus(&[
        "status",
        "w1",
        "--api",
        &format!("http://{tcp}"),
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let cli_steps: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("STEP"))
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(cli_steps, names, "{text}");
    assert!(
        text.contains("repair started") && text.contains(": restored,"),
        "{text}"
    );
    assert!(text.contains("16.0 MiB/16.0 MiB"), "{text}");

    // The socket's way in: a browser through a forward (what `ssh -L PORT:SOCKET` does), no
    // token needed; the page, with the token forgotten, still shows the nodes.
    let forward = forward_to(&r.socket);
    b.eval("sessionStorage.clear()");
    b.call(
        "Page.navigate",
        json!({"url": format!("http://localhost:{forward}/")}),
    );
    let rows = b.wait(&r, "both nodes through the forwarded socket", &node_rows(3));
    assert_eq!(
        rows,
        json!([["s1", "worker", "healthy"], ["w1", "standby", "healthy"]])
    );
    assert_eq!(b.eval("sessionStorage.length"), json!(0));
    // A node that does not exist is said so, in the page.
    b.eval("location.hash = '#/node/nope'");
    b.wait(
        &r,
        "no node nope",
        "document.querySelector('main .error')?.textContent.includes('no node nope')",
    );

    let errors = b.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
    assert!(r.disk_holds_the_image());
    eprintln!(
        "web view: a repair followed in the browser in {:.1} s; steps {names:?}",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn text_from_the_cluster_is_shown_as_text_never_as_markup() {
    if !have_chromium("text_from_the_cluster_is_shown_as_text_never_as_markup") {
        return;
    }
    // A promotion hook whose failure message (its last line of stderr, shown in an alert) is
    // markup with a script in it.
    let dir = tempfile::tempdir().unwrap();
    let hook = dir.path().join("promote.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho '<img src=x onerror=\"window.pwned=1\"><b id=injected>bold</b>' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let r = RepairLab::start_with(203, true, Some(&hook));
    let (tcp, _) = r.tcp.clone().unwrap();
    let mut b = Browser::launch(&r.lab.path("chromium-profile"));
    b.call(
        "Page.navigate",
        json!({"url": format!("http://{tcp}/#token={TOKEN}")}),
    );
    b.wait(
        &r,
        "the node list",
        "document.querySelector('#nodes') !== null",
    );
    r.kill_worker();
    let alert = b.wait(
        &r,
        "the promotion hook's alert",
        r#"[...document.querySelectorAll('.alerts li')].map(li => li.textContent)
            .find(t => t.includes('promotion hook failed')) || null"#,
    );
    assert!(
        alert
            .as_str()
            .unwrap()
            .contains(r#"<img src=x onerror="window.pwned=1"><b id=injected>bold</b>"#),
        "the alert is shown as the text it is: {alert}"
    );
    assert_eq!(
        b.eval("[document.querySelector('#injected'), document.querySelectorAll('img').length, typeof window.pwned]"),
        json!([null, 0, "undefined"])
    );
    let errors = b.errors();
    assert!(errors.is_empty(), "the page reported errors: {errors:#?}");
}

/// A forward of a loopback TCP port to the Unix socket at `socket`, as `ssh -L PORT:SOCKET`
/// makes one; returns the port. Its threads end with the test process.
fn forward_to(socket: &Path) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let socket = socket.to_path_buf();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(tcp) = conn else { continue };
            let Ok(unix) = std::os::unix::net::UnixStream::connect(&socket) else {
                continue;
            };
            let (mut tcp_r, mut unix_w) = (tcp.try_clone().unwrap(), unix.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut tcp_r, &mut unix_w);
                let _ = unix_w.shutdown(std::net::Shutdown::Write);
            });
            let (mut unix_r, mut tcp_w) = (unix, tcp);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut unix_r, &mut tcp_w);
                let _ = tcp_w.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    port
}

/// A raw HTTP/1.1 exchange on `stream`: the status code, the headers (lowercase names) and the
/// body.
fn exchange(
    mut stream: impl std::io::Read + std::io::Write,
    method: &str,
    path: &str,
    headers: &str,
) -> (u16, String, String) {
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    (code, head.to_lowercase(), body.to_string())
}

#[test]
fn the_pages_need_no_token_but_every_fact_does() {
    let r = RepairLab::start(202, true);
    let (tcp, _) = r.tcp.clone().unwrap();
    let host = format!("Host: {tcp}\r\n");
    let bearer = format!("Authorization: Bearer {TOKEN}\r\n");
    let over_tcp = |method: &str, path: &str, headers: &str| {
        exchange(TcpStream::connect(&tcp).unwrap(), method, path, headers)
    };
    let over_socket = |method: &str, path: &str, headers: &str| {
        exchange(
            std::os::unix::net::UnixStream::connect(&r.socket).unwrap(),
            method,
            path,
            headers,
        )
    };

    // The page and its files: no token needed, and a policy that lets only this origin in.
    for (path, kind, holds) in [
        ("/", "text/html", "ui/app.js"),
        ("/ui/app.js", "text/javascript", "sessionStorage"),
        ("/ui/style.css", "text/css", "svg.timeline"),
    ] {
        let (code, head, body) = over_tcp("GET", path, &host);
        assert_eq!(code, 200, "{path}: {head}");
        assert!(head.contains(&format!("content-type: {kind}")), "{head}");
        assert!(body.contains(holds), "{path}");
        assert!(
            head.contains("content-security-policy: default-src 'none'; script-src 'self';"),
            "{head}"
        );
        assert!(head.contains("x-frame-options: deny"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    }
    // Every fact needs the token.
    for path in ["/api/status", "/api/nodes/w1"] {
        let (code, _, body) = over_tcp("GET", path, &host);
        assert_eq!(code, 401, "{path}: {body}");
        assert!(!body.contains("healthy"), "{body}");
    }
    let (code, _, body) = over_tcp("GET", "/api/nodes/w1", &format!("{host}{bearer}"));
    assert_eq!(code, 200, "{body}");
    let d: lazarus_controller::api::NodeDetail = serde_json::from_str(&body).unwrap();
    assert_eq!((d.node.name.as_str(), d.repairs.len()), ("w1", 0));
    assert!(d.now >= d.node.since);
    let (code, _, body) = over_tcp("GET", "/api/nodes/nope", &format!("{host}{bearer}"));
    assert_eq!(code, 404, "{body}");
    // The page's exceptions to the token are GETs of its three files, on a Host of ours.
    let port = tcp.rsplit(':').next().unwrap();
    let evil = format!("Host: evil.example:{port}\r\n");
    assert_eq!(over_tcp("GET", "/", &evil).0, 403);
    assert_eq!(over_tcp("POST", "/", &host).0, 401);
    assert_eq!(over_tcp("GET", "/ui/", &host).0, 401);
    // On the socket, through a forward (Host with a port): the page and the facts, no token.
    let forwarded = "Host: localhost:7470\r\n";
    assert_eq!(over_socket("GET", "/", forwarded).0, 200);
    let (code, _, body) = over_socket("GET", "/api/nodes/w1", forwarded);
    assert_eq!(code, 200, "{body}");
    let origin = "Origin: http://localhost:7470\r\n";
    assert_eq!(
        over_socket("GET", "/api/status", &format!("{forwarded}{origin}")).0,
        403,
        "no web origin on the socket"
    );
}
