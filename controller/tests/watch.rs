//! `lazarus watch` against a real `lazarus serve`: it shows the nodes, stops after `--count`
//! redraws, ends quietly when its reader goes away, and follows a real repair step by step with
//! its progress bar.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::repair_lab::{RepairLab, MIB};
use common::*;
use lazarus_controller::api_client::ApiClient;

/// `lazarus serve`, killed by its pid when the test ends.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A controller over two nodes that stay healthy; returns its API address.
fn controller(lab: &Lab) -> (Controller, String) {
    let api = lab.path("api.sock").display().to_string();
    let ready = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let config = two_node_cluster(
        lab,
        &format!("api = {{ socket = \"{api}\" }}\nready = \"{ready}\""),
        ["127.0.0.90", "127.0.0.91"],
    );
    let log = lab.path("controller.log");
    let c = Controller(serve(&config, &lab.path("data"), &log));
    let deadline = Instant::now() + Duration::from_secs(20);
    while ApiClient::unix(&api).status().is_err() {
        assert!(
            Instant::now() < deadline,
            "no API: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    (c, format!("unix:{api}"))
}

#[test]
fn watch_shows_the_nodes_and_stops_after_count_redraws() {
    let lab = Lab::new();
    let (_controller, api) = controller(&lab);
    let out = lazarus(&["watch", "--api", &api, "--count", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text.matches("NODE").count(), 2, "two redraws: {text}");
    for node in ["w1 ", "s1 "] {
        assert_eq!(
            text.matches(node).count(),
            2,
            "{node} in each redraw: {text}"
        );
    }
    assert!(
        !text.contains('\x1b'),
        "no screen control codes into a pipe: {text:?}"
    );
}

#[test]
fn watch_ends_quietly_when_its_reader_goes_away() {
    let lab = Lab::new();
    let (_controller, api) = controller(&lab);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // No --count: only the closed pipe can end it.
    let mut watch = Command::new(env!("CARGO_BIN_EXE_lazarus"))
        .args(["watch", "--api", &api])
        .stdout(writer)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = watch.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = watch.kill();
            let _ = watch.wait();
            panic!("lazarus watch kept running with its reader gone");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut watch.stderr.take().unwrap(), &mut err).unwrap();
    assert!(status.success(), "{status:?}: {err}");
    assert!(err.is_empty(), "stderr: {err}");
}

/// What one redraw of `lazarus watch` showed of a node: its table row and its bar.
#[derive(Debug, Default, Clone, PartialEq)]
struct Seen {
    role: String,
    state: String,
    /// The PROGRESS column, as printed (`25%` or `-`).
    progress: String,
    /// The bar's percentage, if a bar was drawn.
    bar: Option<u64>,
    /// The copy counters under the node's row (`checked …, fetched …, written …`), if shown.
    copy: Option<String>,
}

/// The redraws in `text` (each begins with the table's header), as what each showed of `node`;
/// a line not yet ended is left out.
fn frames(text: &str, node: &str) -> Vec<Seen> {
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    let mut out: Vec<Seen> = Vec::new();
    // The line before was `node`'s table row.
    let mut after_row = false;
    for line in complete.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"NODE") {
            out.push(Seen::default());
            after_row = false;
            continue;
        }
        let Some(frame) = out.last_mut() else {
            continue;
        };
        let row = std::mem::take(&mut after_row);
        if row && words.first() == Some(&"copy:") {
            frame.copy = line.split_once("copy: ").map(|(_, c)| c.to_string());
            continue;
        }
        if words.first() != Some(&node) || words.len() < 3 {
            continue;
        }
        after_row = !words[1].starts_with('[');
        if words[1].starts_with('[') {
            // `w1 [#####.....] 25%`
            frame.bar = words[2].trim_end_matches('%').parse().ok();
        } else if words.len() >= 4 {
            frame.role = words[1].into();
            frame.state = words[2].into();
            frame.progress = words[3].into();
        }
    }
    out
}

/// `lazarus watch`, its output collected as it comes.
struct Watch {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Watch {
    fn start(api: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_lazarus"))
            .args(["watch", "--api", api])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = Arc::new(Mutex::new(String::new()));
        let stdout = child.stdout.take().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut o = sink.lock().unwrap();
                o.push_str(&line);
                o.push('\n');
            }
        });
        Self { child, out }
    }

    fn text(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    /// Waits until a redraw shows w1 as `pred` wants; returns that redraw.
    fn wait(&self, r: &RepairLab, what: &str, pred: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(seen) = frames(&self.text(), "w1").into_iter().find(|f| pred(f)) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "lazarus watch never showed {what}:\n{}\n{}",
                self.text(),
                r.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The steps of a repair in the order `lazarus watch` must show them.
const ORDER: [&str; 11] = [
    "failing",
    "queued",
    "fencing",
    "promoting",
    "attaching",
    "waiting_ready",
    "recovering",
    "detaching",
    "rebooting",
    "verifying",
    "healthy",
];

#[test]
fn watch_follows_a_repair_through_its_steps_and_its_progress_bar_fills() {
    let mut r = RepairLab::start(200, false);
    let watch = Watch::start(&r.unix_api());
    watch.wait(&r, "w1 healthy before the failure", |f| {
        f.state == "healthy"
    });
    r.kill_worker();
    watch.wait(&r, "w1 recovering", |f| f.state == "recovering");
    // A quarter of the image, then three quarters: the bar moves with each.
    r.feed(4 * MIB);
    let first = watch.wait(&r, "w1's bar past 0%", |f| {
        f.state == "recovering" && f.bar.is_some_and(|p| p > 0)
    });
    r.feed(8 * MIB);
    let second = watch.wait(&r, "w1's bar further on", |f| {
        f.bar.is_some_and(|p| p > first.bar.unwrap())
    });
    assert!(
        second.bar.unwrap() < 100,
        "{second:?}: a quarter is still unfed"
    );
    // Held there, the table shows under w1's row the copy counters its agent reports: a full
    // copy checks nothing, fetched is all that was fed (three whole 4 MiB chunks), and written
    // the same but for the first MiB, which is written last.
    let copy = r.settled_copy("a full copy's counters", |c| c.fetched == 12 * MIB as u64);
    assert_eq!(
        (copy.checked, copy.written),
        (0, 11 * MIB as u64),
        "{copy:?}"
    );
    let summary = lazarus_controller::api_client::copy_summary(&copy).unwrap();
    assert_eq!(summary, "fetched 12.0 MiB, written 11.0 MiB");
    let shown = watch.wait(&r, "w1's copy counters", |f| {
        f.copy.as_deref() == Some(summary.as_str())
    });
    assert_eq!(shown.state, "recovering");
    r.finish();
    let last = watch.wait(&r, "w1 back as a standby", |f| {
        f.state == "healthy" && f.role == "standby"
    });
    assert_eq!(last.progress, "-");
    assert_eq!(last.copy, None, "no counters once the copy step is over");
    assert!(r.disk_holds_the_image());

    let text = watch.text();
    assert!(
        !text.contains('\x1b'),
        "no screen control codes into a pipe"
    );
    let seen = frames(&text, "w1");
    // The states shown, in order, from the failure on: each step later than the one before.
    let mut states: Vec<&str> = Vec::new();
    for f in seen.iter().skip_while(|f| f.state == "healthy") {
        if states.last() != Some(&f.state.as_str()) {
            states.push(&f.state);
        }
    }
    let positions: Vec<usize> = states
        .iter()
        .map(|s| {
            ORDER
                .iter()
                .position(|o| o == s)
                .unwrap_or_else(|| panic!("state {s} out of a repair: {states:?}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "steps out of order: {states:?}"
    );
    for must in ["recovering", "healthy"] {
        assert!(states.contains(&must), "{must} never shown: {states:?}");
    }
    // The bar and the table's PROGRESS column say the same, and the bar never goes back.
    let bars: Vec<u64> = seen.iter().filter_map(|f| f.bar).collect();
    assert!(
        bars.windows(2).all(|w| w[0] <= w[1]),
        "bar went back: {bars:?}"
    );
    for f in seen.iter().filter(|f| f.copy.is_some()) {
        assert_eq!(f.state, "recovering", "counters only while copying: {f:?}");
    }
    for f in seen.iter().filter(|f| f.bar.is_some()) {
        assert_eq!(f.progress, format!("{}%", f.bar.unwrap()), "{f:?}");
        assert_eq!(f.state, "recovering", "a bar only while writing: {f:?}");
    }
    eprintln!("lazarus watch showed w1 {states:?}, its bar at {bars:?}, held at: {summary}");
    // s1 took w1's place.
    let s1 = frames(&text, "s1");
    assert_eq!(s1.last().unwrap().role, "worker", "{text}");
}

/// `HH:MM:SS UTC` of Unix seconds `t`.
fn clock(t: u64) -> String {
    let s = t % 86_400;
    format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60)
}

#[test]
fn status_and_watch_show_a_differential_copys_counters_and_a_stalled_source() {
    let mut r = RepairLab::start_differential(204, false);
    let api = r.unix_api();
    let (packed, damaged) = r.packed.clone().unwrap();
    assert_eq!((packed.len(), &damaged[..]), (4, &[1, 3][..]));
    let chunk = u64::from(packed.chunk_size());
    r.kill_worker();
    r.wait_for("w1 recovering", Duration::from_secs(60), |s| {
        s.nodes
            .iter()
            .any(|n| n.name == "w1" && n.state == "recovering")
    });
    // Frames 0 and 1 and half of frame 2: the agent has read back the whole disk, fetched all
    // of the stream fed so far (compressed bytes: chunk 0 read past, chunk 1 kept, half of
    // chunk 2's frame) and written chunk 1; chunk 3 waits for the rest.
    let (at, len) = packed.frame(2).unwrap();
    let fed = at + u64::from(len) / 2;
    r.feed_to(fed as usize);
    let want = lazarus_proto::CopyCounters {
        checked: 4 * chunk,
        fetched: fed,
        written: chunk,
        source_stalled_since: None,
    };
    let held_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let copy = r.settled_copy("a differential copy's counters", |c| c.written > 0);
    assert_eq!(copy, want);
    let w1 = r.node("w1");
    assert_eq!(
        (w1.bytes_done, w1.bytes_total),
        (3 * chunk, 4 * chunk),
        "two chunks matched, one written"
    );
    let line = format!(
        "{:<12} copy: checked 16.0 MiB, fetched {:.1} MiB, written 4.0 MiB",
        "",
        fed as f64 / MIB as f64
    );
    // `lazarus status w1`: the counters under its row.
    let node = ok(&["status", "w1", "--api", &api]);
    let lines: Vec<&str> = node.lines().collect();
    assert!(lines[1].starts_with("w1 "), "{node}");
    assert_eq!(lines[2], line, "{node}");
    // `lazarus status`: the same under w1's row, nothing under s1's.
    let table = ok(&["status", "--api", &api]);
    assert_eq!(table.matches("copy:").count(), 1, "{table}");
    let at = table.lines().position(|l| l.starts_with("w1 ")).unwrap();
    assert_eq!(table.lines().nth(at + 1), Some(line.as_str()), "{table}");
    // The JSON API carries the four fields.
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["status", "w1", "--json", "--api", &api])).unwrap();
    assert_eq!(
        json["node"]["copy"],
        serde_json::json!({"checked": 4 * chunk, "fetched": fed, "written": chunk,
            "source_stalled_since": null}),
        "{json}"
    );
    // `lazarus watch`: the same line.
    let watched = ok(&["watch", "--api", &api, "--count", "1"]);
    assert!(watched.contains(&line), "{watched}");

    // The source stays silent: within the agent's report time (10 s) and a poll, the stall is
    // said everywhere, with the time it began.
    let stalled = r.settled_copy("the stalled source", |c| c.source_stalled_since.is_some());
    let since = stalled.source_stalled_since.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (held_at.saturating_sub(5)..=now).contains(&since),
        "stalled since {since}, held at {held_at}, now {now}"
    );
    assert_eq!(
        lazarus_proto::CopyCounters {
            source_stalled_since: None,
            ..stalled
        },
        want,
        "nothing moved meanwhile"
    );
    let said = format!("{line}; source stalled since {}", clock(since));
    let node = ok(&["status", "w1", "--api", &api]);
    assert_eq!(node.lines().nth(2), Some(said.as_str()), "{node}");
    let watched = ok(&["watch", "--api", &api, "--count", "1"]);
    assert!(watched.contains(&said), "{watched}");
    eprintln!("differential copy held: {said}");

    // The source comes back: the copy goes on and ends; the counters leave the views.
    r.finish();
    assert!(r.disk_holds_the_image());
    assert_eq!(r.node("w1").copy, None);
    assert!(!ok(&["status", "w1", "--api", &api]).contains("copy:"));
}
