//! The Redfish boot provider against the sushy-tools emulator (the Redfish BMC emulator OpenStack
//! Ironic and Metal3 test against), fake systems driver, with the rescue ISO served over HTTP.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lazarus_controller::redfish::Bmc;
use serde_json::Value;

const UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

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
    let (bmc_port, http_port) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("conf.py"),
        format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {bmc_port}\nSUSHY_EMULATOR_FAKE_DRIVER = True\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{UUID}', 'name': 'node-1', 'power_state': 'On', 'nics': [{{'mac': '52:54:00:00:10:01', 'ip': '127.0.0.41'}}]}}]\n"
        ),
    )
    .unwrap();
    let _emu = Kill(
        Command::new("sushy-emulator")
            .arg("--config")
            .arg(dir.path().join("conf.py"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
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
    wait_port(bmc_port);
    wait_port(http_port);
    let base = format!("http://127.0.0.1:{bmc_port}");
    let system = format!("/redfish/v1/Systems/{UUID}");
    let bmc = Bmc {
        endpoint: base.clone(),
        system: system.clone(),
        auth: None,
        insecure: false,
    };

    // Ejecting an empty drive is not an error (a common BMC quirk).
    let cd = bmc.cd_device().unwrap();
    bmc.eject(&cd).unwrap();

    // Fencing: power off, waiting out the BMC's delay.
    bmc.power_off(Duration::from_secs(30)).unwrap();
    assert_eq!(bmc.power_state().unwrap(), "Off");

    // Attach: the ISO inserted, a one-time boot from CD, powered on.
    let iso = format!("http://127.0.0.1:{http_port}/rescue.iso");
    bmc.attach(&iso).unwrap();
    let media = get(&format!("{base}{cd}"));
    assert_eq!(
        (media["Image"].as_str(), media["Inserted"].as_bool()),
        (Some(iso.as_str()), Some(true)),
        "{media}"
    );
    let sys = get(&format!("{base}{system}"));
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Cd", "{sys}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while bmc.power_state().unwrap() != "On" {
        assert!(Instant::now() < deadline, "never powered on");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Detach: ejected again, booting from the disk.
    bmc.detach().unwrap();
    let media = get(&format!("{base}{cd}"));
    assert_ne!(media["Inserted"].as_bool(), Some(true), "{media}");
    let sys = get(&format!("{base}{system}"));
    assert_eq!(sys["Boot"]["BootSourceOverrideTarget"], "Hdd", "{sys}");

    // A wrong system is a clear error, not a panic.
    let wrong = Bmc {
        endpoint: base,
        system: "/redfish/v1/Systems/nope".into(),
        auth: None,
        insecure: false,
    };
    let err = wrong.power_state().unwrap_err().to_string();
    assert!(err.contains("HTTP 404"), "{err}");
}
