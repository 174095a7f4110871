//! The Redfish boot provider against the sushy-tools emulator (the Redfish BMC emulator OpenStack
//! Ironic and Metal3 test against), fake systems driver, with the rescue ISO served over HTTP;
//! and the same emulator serving TLS with a certificate from a CA the test makes with `openssl`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazarus_controller::redfish::{Bmc, BmcOptions, Trust};
use serde_json::Value;

const UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";
const BUDGET: Duration = Duration::from_secs(60);

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(url: &str) -> Value {
    let mut resp = ureq::get(url).call().unwrap();
    serde_json::from_str(&resp.body_mut().read_to_string().unwrap()).unwrap()
}

/// sushy-emulator with one fake system on a free port, serving TLS with `tls` (certificate, key).
fn sushy(dir: &Path, tls: Option<(&Path, &Path)>) -> (Kill, u16) {
    let port = free_port();
    let conf = dir.join("sushy.py");
    std::fs::write(
        &conf,
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\nSUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{UUID}', 'name': 'node-1', 'power_state': 'On', 'nics': [{{'mac': '52:54:00:00:10:01', 'ip': '127.0.0.41'}}]}}]\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("sushy-emulator");
    cmd.arg("--config").arg(&conf);
    if let Some((cert, key)) = tls {
        cmd.arg("--ssl-certificate")
            .arg(cert)
            .arg("--ssl-key")
            .arg(key);
    }
    let child = Kill(
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    (child, port)
}

fn bmc(endpoint: String, trust: Trust, insecure_http: bool) -> Bmc {
    Bmc::new(&BmcOptions {
        endpoint,
        system: format!("/redfish/v1/Systems/{UUID}"),
        auth: None,
        trust,
        insecure_http,
    })
    .unwrap()
}

#[test]
fn redfish_powers_off_attaches_the_rescue_iso_once_and_detaches_it() {
    if !lazarus_testkit::require(
        "redfish_powers_off_attaches_the_rescue_iso_once_and_detaches_it",
        lazarus_testkit::program("sushy-emulator", "scripts/test installs sushy-tools"),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rescue.iso"), vec![0x42u8; 64 * 1024]).unwrap();
    let (_emu, bmc_port) = sushy(dir.path(), None);
    let http_port = free_port();
    let _http = Kill(
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &http_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(http_port);
    let base = format!("http://127.0.0.1:{bmc_port}");
    let system = format!("/redfish/v1/Systems/{UUID}");
    let bmc = bmc(base.clone(), Trust::PublicRoots, true);

    // Ejecting an empty drive is not an error (a common BMC quirk).
    let cd = bmc.within(BUDGET).cd_device().unwrap();
    bmc.within(BUDGET).eject(&cd).unwrap();

    // Fencing: power off, waiting out the BMC's delay.
    bmc.within(BUDGET).power_off().unwrap();
    assert_eq!(bmc.within(BUDGET).power_state().unwrap(), "Off");

    // Attach: the ISO inserted, a one-time boot from CD, powered on.
    let iso = format!("http://127.0.0.1:{http_port}/rescue.iso");
    bmc.within(BUDGET).attach(&iso).unwrap();
    let media = get(&format!("{base}{cd}"));
    assert_eq!(
        (media["Image"].as_str(), media["Inserted"].as_bool()),
        (Some(iso.as_str()), Some(true)),
        "{media}"
    );
    let sys = get(&format!("{base}{system}"));
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while bmc.within(BUDGET).power_state().unwrap() != "On" {
        assert!(Instant::now() < deadline, "never powered on");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Detach: ejected again, booting from the disk.
    bmc.within(BUDGET).detach().unwrap();
    let media = get(&format!("{base}{cd}"));
    assert_ne!(media["Inserted"].as_bool(), Some(true), "{media}");
    let sys = get(&format!("{base}{system}"));
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Hdd", "{sys}");

    // A wrong system is a clear error, not a panic.
    let wrong = Bmc::new(&BmcOptions {
        endpoint: base.clone(),
        system: "/redfish/v1/Systems/nope".into(),
        insecure_http: true,
        ..Default::default()
    })
    .unwrap();
    let err = wrong.within(BUDGET).power_state().unwrap_err().to_string();
    assert!(err.contains("HTTP 404"), "{err}");

    // Without insecure_http, the same plain-http endpoint is refused before any request.
    let err = Bmc::new(&BmcOptions {
        endpoint: base,
        system,
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("plain http") && err.contains("insecure_http = true"),
        "{err}"
    );
}

/// `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`NAME.pem`, `NAME.key`), self-signed, valid for two days.
fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN=Lazarus test {name}"),
        ],
    );
}

#[test]
fn redfish_over_tls_trusts_the_ca_file_and_nothing_else() {
    if !lazarus_testkit::require(
        "redfish_over_tls_trusts_the_ca_file_and_nothing_else",
        lazarus_testkit::program("sushy-emulator", "scripts/test installs sushy-tools").and(
            lazarus_testkit::program("openssl", "scripts/test installs openssl"),
        ),
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The site CA that issued the BMC's certificate, and another CA that did not.
    make_ca(d, "site-ca");
    make_ca(d, "other-ca");
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "bmc.key",
            "-out",
            "bmc.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        d.join("bmc.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "bmc.csr",
            "-CA",
            "site-ca.pem",
            "-CAkey",
            "site-ca.key",
            "-CAcreateserial",
            "-out",
            "bmc.pem",
            "-days",
            "2",
            "-extfile",
            "bmc.ext",
        ],
    );
    let (_emu, port) = sushy(d, Some((&d.join("bmc.pem"), &d.join("bmc.key"))));
    let endpoint = format!("https://127.0.0.1:{port}");

    // The right CA: the whole provider works over TLS.
    let good = bmc(
        endpoint.clone(),
        Trust::CaFile(d.join("site-ca.pem")),
        false,
    );
    let op = good.within(BUDGET);
    assert!(op.cd_device().unwrap().ends_with("/VirtualMedia/Cd"));
    op.power_off().unwrap();
    assert_eq!(op.power_state().unwrap(), "Off");

    // Another CA, or the public roots (no ca_file, insecure unset): refused at the handshake,
    // at once (a certificate that does not verify is not retried).
    for trust in [Trust::CaFile(d.join("other-ca.pem")), Trust::PublicRoots] {
        let started = Instant::now();
        let err = bmc(endpoint.clone(), trust.clone(), false)
            .within(BUDGET)
            .power_state()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("reading the power state")
                && err.contains(&endpoint)
                && err.to_lowercase().contains("certificate"),
            "{trust:?}: {err}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{trust:?}");
    }

    // insecure = true still talks to it, unchecked.
    let unchecked = bmc(endpoint.clone(), Trust::Insecure, false);
    assert_eq!(unchecked.within(BUDGET).power_state().unwrap(), "Off");

    // A CA file that holds no certificate is refused when the provider is set up.
    std::fs::write(d.join("empty.pem"), "not a certificate\n").unwrap();
    let err = Bmc::new(&BmcOptions {
        endpoint,
        trust: Trust::CaFile(d.join("empty.pem")),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("empty.pem") && err.contains("no PEM certificate"),
        "{err}"
    );
}
