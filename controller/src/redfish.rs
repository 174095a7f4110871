//! The Redfish boot provider: a BMC powers the node, serves the rescue ISO as virtual media and
//! boots it once.
//!
//! Works with the common BMC quirks: ejecting when nothing is inserted is not an error; a 503 (a
//! busy BMC) or a dropped connection is retried with backoff; power changes are not immediate, so
//! power-off waits until the BMC reports `Off`. Virtual media is found under the system (newer
//! BMCs, sushy-tools) or under its manager (older BMCs). Tested against the sushy-tools emulator.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A BMC endpoint and one system behind it.
#[derive(Debug, Clone)]
pub struct Bmc {
    /// `https://10.71.0.11` (no trailing slash).
    pub endpoint: String,
    /// `/redfish/v1/Systems/1`.
    pub system: String,
    pub auth: Option<(String, String)>,
    pub insecure: bool,
}

const ATTEMPTS: u32 = 5;

impl Bmc {
    fn agent(&self) -> ureq::Agent {
        let mut cfg = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false);
        if self.insecure {
            cfg = cfg.tls_config(
                ureq::tls::TlsConfig::builder()
                    .disable_verification(true)
                    .build(),
            );
        }
        cfg.build().into()
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.endpoint)
        }
    }

    /// One request with retries on 503 and connection errors; returns status and body.
    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), String> {
        let agent = self.agent();
        let url = self.url(path);
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt.min(4)));
            }
            let auth = self
                .auth
                .as_ref()
                .map(|(u, p)| format!("Basic {}", base64(format!("{u}:{p}").as_bytes())));
            let result = match (method, body) {
                ("GET", _) => {
                    let mut r = agent.get(&url).header("Accept", "application/json");
                    if let Some(a) = &auth {
                        r = r.header("Authorization", a);
                    }
                    r.call()
                }
                (m, b) => {
                    let mut r = match m {
                        "PATCH" => agent.patch(&url),
                        _ => agent.post(&url),
                    }
                    .header("Content-Type", "application/json");
                    if let Some(a) = &auth {
                        r = r.header("Authorization", a);
                    }
                    r.send(serde_json::to_vec(&b.cloned().unwrap_or(json!({}))).unwrap_or_default())
                }
            };
            match result {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    if status == 503 {
                        last = format!("{method} {url}: 503 (BMC busy)");
                        continue;
                    }
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return Ok((status, value));
                }
                Err(e) => last = format!("{method} {url}: {e}"),
            }
        }
        Err(last)
    }

    fn ok(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
        let (status, value) = self.request(method, path, body)?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(format!(
                "{method} {path}: HTTP {status}: {}",
                message(&value)
            ))
        }
    }

    /// The system's power state (`On`, `Off`, …).
    pub fn power_state(&self) -> Result<String, String> {
        let sys = self.ok("GET", &self.system, None)?;
        Ok(sys["PowerState"].as_str().unwrap_or("Unknown").to_string())
    }

    fn reset(&self, kind: &str) -> Result<(), String> {
        let path = format!("{}/Actions/ComputerSystem.Reset", self.system);
        self.ok("POST", &path, Some(&json!({ "ResetType": kind })))
            .map(|_| ())
    }

    /// Powers the system off and waits until the BMC reports it off.
    pub fn power_off(&self, timeout: Duration) -> Result<(), String> {
        if self.power_state()? == "Off" {
            return Ok(());
        }
        self.reset("ForceOff")?;
        let deadline = Instant::now() + timeout;
        while self.power_state()? != "Off" {
            if Instant::now() > deadline {
                return Err(format!(
                    "{} still not off after {}s",
                    self.system,
                    timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// The CD/DVD virtual media device's path.
    pub fn cd_device(&self) -> Result<String, String> {
        let sys = self.ok("GET", &self.system, None)?;
        let mut collections = Vec::new();
        if let Some(p) = sys["VirtualMedia"]["@odata.id"].as_str() {
            collections.push(p.to_string());
        }
        for m in sys["Links"]["ManagedBy"].as_array().into_iter().flatten() {
            if let Some(p) = m["@odata.id"].as_str() {
                collections.push(format!("{p}/VirtualMedia"));
            }
        }
        for c in collections {
            let Ok(list) = self.ok("GET", &c, None) else {
                continue;
            };
            for member in list["Members"].as_array().into_iter().flatten() {
                let Some(path) = member["@odata.id"].as_str() else {
                    continue;
                };
                let Ok(dev) = self.ok("GET", path, None) else {
                    continue;
                };
                let cd = dev["MediaTypes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| matches!(t.as_str(), Some("CD" | "DVD")));
                if cd {
                    return Ok(path.to_string());
                }
            }
        }
        Err(format!("{}: no CD/DVD virtual media", self.system))
    }

    /// Ejects whatever is inserted; nothing inserted is fine.
    pub fn eject(&self, device: &str) -> Result<(), String> {
        let path = format!("{device}/Actions/VirtualMedia.EjectMedia");
        match self.request("POST", &path, Some(&json!({})))? {
            (s, _) if (200..300).contains(&s) => Ok(()),
            // BMCs answer an eject of an empty drive with 400, 404 or 409 (or 500).
            (400 | 404 | 409 | 500, _) => Ok(()),
            (s, v) => Err(format!("ejecting {device}: HTTP {s}: {}", message(&v))),
        }
    }

    /// Inserts `image_url`, sets a one-time boot from CD, and powers the system on (or resets
    /// it if on): the node boots the rescue ISO once, then its own disk again.
    pub fn attach(&self, image_url: &str) -> Result<(), String> {
        let cd = self.cd_device()?;
        self.eject(&cd)?;
        let insert = json!({ "Image": image_url, "Inserted": true, "WriteProtected": true });
        self.ok(
            "POST",
            &format!("{cd}/Actions/VirtualMedia.InsertMedia"),
            Some(&insert),
        )?;
        let boot = json!({ "Boot": { "BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once" } });
        self.ok("PATCH", &self.system, Some(&boot))?;
        match self.power_state()?.as_str() {
            "Off" => self.reset("On"),
            _ => self.reset("ForceRestart"),
        }
    }

    /// Ejects the rescue ISO and clears any boot override left behind.
    pub fn detach(&self) -> Result<(), String> {
        let cd = self.cd_device()?;
        self.eject(&cd)?;
        // Some BMCs (and the emulator) want a target with every override change, and some keep a
        // "once" override as continuous: point it back at the disk as well as disabling it.
        let boot = json!({ "Boot": { "BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Disabled" } });
        self.ok("PATCH", &self.system, Some(&boot)).map(|_| ())
    }
}

/// A Redfish error's message, or the body.
fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
}

/// RFC 4648 base64, for the Basic authorization header.
fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    #[test]
    fn a_busy_bmc_is_retried() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", l.local_addr().unwrap());
        let server = std::thread::spawn(move || {
            for i in 0..3 {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 2048];
                let _ = s.read(&mut buf);
                let body = r#"{"PowerState":"On"}"#;
                let answer = if i < 2 {
                    "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
                };
                s.write_all(answer.as_bytes()).unwrap();
            }
        });
        let bmc = super::Bmc {
            endpoint,
            system: "/redfish/v1/Systems/1".into(),
            auth: Some(("u".into(), "p".into())),
            insecure: false,
        };
        assert_eq!(bmc.power_state().unwrap(), "On");
        server.join().unwrap();
    }

    #[test]
    fn base64_matches_rfc_4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foobar", "Zm9vYmFy"),
            ("lazarus:s3cret", "bGF6YXJ1czpzM2NyZXQ="),
        ] {
            assert_eq!(super::base64(i.as_bytes()), o);
        }
    }
}
