//! The Redfish boot provider: a BMC powers the node, serves the rescue ISO as virtual media and
//! boots it once.
//!
//! Works with the common BMC quirks: ejecting when nothing is inserted is not an error; a 503 (a
//! busy BMC) or a dropped connection is retried with backoff; power changes are not immediate, so
//! power-off waits until the BMC reports `Off`. Virtual media is found under the system (newer
//! BMCs, sushy-tools) or under its manager (older BMCs). Tested against the sushy-tools emulator.

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
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

/// The HTTP methods the provider uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Patch,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Patch => "PATCH",
        })
    }
}

/// One Redfish request that failed, after its retries.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("{method} {url}: 503 (BMC busy)")]
    Busy { method: Method, url: String },
    #[error("{method} {path}: HTTP {status}: {message}")]
    Status {
        method: Method,
        path: String,
        status: u16,
        message: String,
    },
}

/// Errors of the Redfish provider, one per step, each with the request that failed.
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error("reading the power state: {0}")]
    PowerState(#[source] RequestError),
    #[error("{kind} reset: {source}")]
    Reset {
        kind: &'static str,
        source: RequestError,
    },
    #[error("{system} still not off after {}s", timeout.as_secs())]
    StillOn { system: String, timeout: Duration },
    #[error("finding the virtual media: {0}")]
    System(#[source] RequestError),
    #[error("{0}: no CD/DVD virtual media")]
    NoCd(String),
    #[error("ejecting {device}: {source}")]
    Eject {
        device: String,
        source: RequestError,
    },
    #[error("inserting {image} into {device}: {source}")]
    Insert {
        image: String,
        device: String,
        source: RequestError,
    },
    #[error("setting the boot override: {0}")]
    BootOverride(#[source] RequestError),
}

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
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), RequestError> {
        let agent = self.agent();
        let url = self.url(path);
        let auth = self
            .auth
            .as_ref()
            .map(|(u, p)| format!("Basic {}", BASE64.encode(format!("{u}:{p}"))));
        let mut last = RequestError::Busy {
            method,
            url: url.clone(),
        };
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt.min(4)));
            }
            let result = match method {
                Method::Get => {
                    let mut r = agent.get(&url).header("Accept", "application/json");
                    if let Some(a) = &auth {
                        r = r.header("Authorization", a);
                    }
                    r.call()
                }
                Method::Post | Method::Patch => {
                    let mut r = match method {
                        Method::Patch => agent.patch(&url),
                        _ => agent.post(&url),
                    }
                    .header("Content-Type", "application/json");
                    if let Some(a) = &auth {
                        r = r.header("Authorization", a);
                    }
                    r.send(serde_json::to_vec(body.unwrap_or(&json!({}))).unwrap_or_default())
                }
            };
            match result {
                Ok(mut resp) => {
                    let status = resp.status().as_u16();
                    if status == 503 {
                        last = RequestError::Busy {
                            method,
                            url: url.clone(),
                        };
                        continue;
                    }
                    let text = resp.body_mut().read_to_string().unwrap_or_default();
                    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    return Ok((status, value));
                }
                Err(e) => {
                    last = RequestError::Transport {
                        method,
                        url: url.clone(),
                        source: Box::new(e),
                    }
                }
            }
        }
        Err(last)
    }

    /// A request that must answer 2xx; returns the body.
    fn ok(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value, RequestError> {
        let (status, value) = self.request(method, path, body)?;
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(RequestError::Status {
                method,
                path: path.to_string(),
                status,
                message: message(&value),
            })
        }
    }

    /// The system's power state (`On`, `Off`, …).
    pub fn power_state(&self) -> Result<String, RedfishError> {
        let sys = self
            .ok(Method::Get, &self.system, None)
            .map_err(RedfishError::PowerState)?;
        Ok(sys["PowerState"].as_str().unwrap_or("Unknown").to_string())
    }

    fn reset(&self, kind: &'static str) -> Result<(), RedfishError> {
        let path = format!("{}/Actions/ComputerSystem.Reset", self.system);
        self.ok(Method::Post, &path, Some(&json!({ "ResetType": kind })))
            .map(|_| ())
            .map_err(|source| RedfishError::Reset { kind, source })
    }

    /// Powers the system off and waits until the BMC reports it off.
    pub fn power_off(&self, timeout: Duration) -> Result<(), RedfishError> {
        if self.power_state()? == "Off" {
            return Ok(());
        }
        self.reset("ForceOff")?;
        let deadline = Instant::now() + timeout;
        while self.power_state()? != "Off" {
            if Instant::now() > deadline {
                return Err(RedfishError::StillOn {
                    system: self.system.clone(),
                    timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    }

    /// Powers the system on if it is off (a node that is on is left alone).
    pub fn power_on(&self) -> Result<(), RedfishError> {
        match self.power_state()?.as_str() {
            "Off" => self.reset("On"),
            _ => Ok(()),
        }
    }

    /// The CD/DVD virtual media device's path.
    pub fn cd_device(&self) -> Result<String, RedfishError> {
        let sys = self
            .ok(Method::Get, &self.system, None)
            .map_err(RedfishError::System)?;
        let mut collections = Vec::new();
        if let Some(p) = sys["VirtualMedia"]["@odata.id"].as_str() {
            collections.push(p.to_string());
        }
        for m in sys["Links"]["ManagedBy"].as_array().into_iter().flatten() {
            if let Some(p) = m["@odata.id"].as_str() {
                collections.push(format!("{p}/VirtualMedia"));
            }
        }
        // A collection or device that does not answer is skipped: another may hold the CD.
        for c in collections {
            let Ok(list) = self.ok(Method::Get, &c, None) else {
                continue;
            };
            for member in list["Members"].as_array().into_iter().flatten() {
                let Some(path) = member["@odata.id"].as_str() else {
                    continue;
                };
                let Ok(dev) = self.ok(Method::Get, path, None) else {
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
        Err(RedfishError::NoCd(self.system.clone()))
    }

    /// Ejects whatever is inserted; nothing inserted is fine.
    pub fn eject(&self, device: &str) -> Result<(), RedfishError> {
        let path = format!("{device}/Actions/VirtualMedia.EjectMedia");
        let eject_error = |source| RedfishError::Eject {
            device: device.to_string(),
            source,
        };
        match self
            .request(Method::Post, &path, Some(&json!({})))
            .map_err(eject_error)?
        {
            (s, _) if (200..300).contains(&s) => Ok(()),
            // BMCs answer an eject of an empty drive with 400, 404 or 409 (or 500).
            (400 | 404 | 409 | 500, _) => Ok(()),
            (status, v) => Err(eject_error(RequestError::Status {
                method: Method::Post,
                path,
                status,
                message: message(&v),
            })),
        }
    }

    /// Inserts `image_url`, sets a one-time boot from CD, and powers the system on (or resets
    /// it if on): the node boots the rescue ISO once, then its own disk again.
    pub fn attach(&self, image_url: &str) -> Result<(), RedfishError> {
        let cd = self.cd_device()?;
        self.eject(&cd)?;
        let insert = json!({ "Image": image_url, "Inserted": true, "WriteProtected": true });
        self.ok(
            Method::Post,
            &format!("{cd}/Actions/VirtualMedia.InsertMedia"),
            Some(&insert),
        )
        .map_err(|source| RedfishError::Insert {
            image: image_url.to_string(),
            device: cd.clone(),
            source,
        })?;
        let boot = json!({ "Boot": { "BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once" } });
        self.ok(Method::Patch, &self.system, Some(&boot))
            .map_err(RedfishError::BootOverride)?;
        match self.power_state()?.as_str() {
            "Off" => self.reset("On"),
            _ => self.reset("ForceRestart"),
        }
    }

    /// Ejects the rescue ISO and clears any boot override left behind.
    pub fn detach(&self) -> Result<(), RedfishError> {
        let cd = self.cd_device()?;
        self.eject(&cd)?;
        // Some BMCs (and the emulator) want a target with every override change, and some keep a
        // "once" override as continuous: point it back at the disk as well as disabling it.
        let boot = json!({ "Boot": { "BootSourceOverrideTarget": "Hdd", "BootSourceOverrideEnabled": "Disabled" } });
        self.ok(Method::Patch, &self.system, Some(&boot))
            .map(|_| ())
            .map_err(RedfishError::BootOverride)
    }
}

/// A Redfish error's message, or the body.
fn message(v: &Value) -> String {
    v["error"]["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| v.to_string())
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
                let n = s.read(&mut buf).unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                // RFC 7617: base64 of "u:p".
                assert!(
                    request.contains("authorization: basic dtpw\r\n"),
                    "{request}"
                );
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
}
