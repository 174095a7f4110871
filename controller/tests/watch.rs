//! `lazarus watch` against a real `lazarus serve`: it shows the nodes, stops after `--count`
//! redraws, and ends quietly when its reader goes away.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
