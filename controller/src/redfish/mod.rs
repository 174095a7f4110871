//! The Redfish boot provider: a BMC powers the node, serves the rescue ISO as virtual media and
//! boots it once.
//!
//! Trust: the BMC is reached over https, its certificate checked against `ca_file` (or the
//! public roots; `insecure` skips the check); plain http only with `insecure_http`. Links and
//! task monitors are followed only on the endpoint's own origin (scheme, host, port) and
//! redirects never, so the BMC's credentials go nowhere else (`client.rs`). The password file is
//! read only if it is a regular file no one but its owner can read (`password.rs`). Every
//! operation ([`Bmc::within`]) has one deadline: its requests, retries and polls all end by it,
//! whatever the BMC does (a BMC that accepts and never answers included).
//!
//! Works with the common BMC quirks: ejecting when nothing is inserted is not an error; a 503 (a
//! busy BMC) or a dropped connection is retried with backoff; power changes are not immediate, so
//! power-off waits until the BMC reports `Off`; a 202 with a task monitor is polled until the
//! task ends. Virtual media is found under the system (newer BMCs, sushy-tools) or under its
//! manager (older BMCs). Tested against the sushy-tools emulator, over TLS too, and against
//! hostile fake BMCs (`controller/tests/redfish_hostile.rs`).

mod client;
mod password;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

pub use client::{Bmc, BmcOptions, EndpointError, Method, Operation, Origin, RequestError, Trust};
pub use password::{read_password_file, PasswordFileError};

use client::message;

/// Errors of the Redfish provider, one per step, each with the request that failed.
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("reading the CA file {}: {source}", path.display())]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("CA file {}: {message}", path.display())]
    CaPem { path: PathBuf, message: String },
    #[error("reading the power state: {0}")]
    PowerState(#[source] RequestError),
    #[error("{kind} reset: {source}")]
    Reset {
        kind: &'static str,
        source: RequestError,
    },
    #[error("{system} still not off when the operation's {} deadline passed", humantime::format_duration(*budget))]
    StillOn { system: String, budget: Duration },
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
        source: Box<RequestError>,
    },
    #[error("setting the boot override: {0}")]
    BootOverride(#[source] RequestError),
}

impl Operation<'_> {
    /// The system's power state (`On`, `Off`, …).
    pub fn power_state(&self) -> Result<String, RedfishError> {
        let sys = self
            .ok(Method::Get, &self.bmc.system, None)
            .map_err(RedfishError::PowerState)?;
        Ok(sys["PowerState"].as_str().unwrap_or("Unknown").to_string())
    }

    fn reset(&self, kind: &'static str) -> Result<(), RedfishError> {
        let path = format!("{}/Actions/ComputerSystem.Reset", self.bmc.system);
        self.ok(Method::Post, &path, Some(&json!({ "ResetType": kind })))
            .map(|_| ())
            .map_err(|source| RedfishError::Reset { kind, source })
    }

    /// Powers the system off and waits until the BMC reports it off.
    pub fn power_off(&self) -> Result<(), RedfishError> {
        if self.power_state()? == "Off" {
            return Ok(());
        }
        self.reset("ForceOff")?;
        while self.power_state()? != "Off" {
            if !self.pause(Duration::from_millis(500)) {
                return Err(RedfishError::StillOn {
                    system: self.bmc.system.clone(),
                    budget: self.budget,
                });
            }
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

    /// The CD/DVD virtual media device's path. A link off the BMC's origin is an error, never
    /// skipped: a BMC that offers one is not to be trusted with the rest.
    pub fn cd_device(&self) -> Result<String, RedfishError> {
        let sys = self
            .ok(Method::Get, &self.bmc.system, None)
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
        let get = |link: &str| match self.ok(Method::Get, link, None) {
            Ok(v) => Ok(Some(v)),
            Err(e @ (RequestError::ForeignLink { .. } | RequestError::Deadline { .. })) => {
                Err(RedfishError::System(e))
            }
            Err(_) => Ok(None),
        };
        for c in collections {
            let Some(list) = get(&c)? else {
                continue;
            };
            for member in list["Members"].as_array().into_iter().flatten() {
                let Some(path) = member["@odata.id"].as_str() else {
                    continue;
                };
                let Some(dev) = get(path)? else {
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
        Err(RedfishError::NoCd(self.bmc.system.clone()))
    }

    /// Ejects whatever is inserted; nothing inserted is fine.
    pub fn eject(&self, device: &str) -> Result<(), RedfishError> {
        let path = format!("{device}/Actions/VirtualMedia.EjectMedia");
        let eject_error = |source| RedfishError::Eject {
            device: device.to_string(),
            source,
        };
        let answer = self
            .request(Method::Post, &path, Some(&json!({})))
            .map_err(eject_error)?;
        match answer.status {
            s if (200..300).contains(&s) => Ok(()),
            // BMCs answer an eject of an empty drive with 400, 404 or 409 (or 500).
            400 | 404 | 409 | 500 => Ok(()),
            status => Err(eject_error(RequestError::Status {
                method: Method::Post,
                path,
                status,
                message: message(&answer.body),
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
            source: Box::new(source),
        })?;
        let boot = json!({ "Boot": { "BootSourceOverrideTarget": "Cd", "BootSourceOverrideEnabled": "Once" } });
        self.ok(Method::Patch, &self.bmc.system, Some(&boot))
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
        self.ok(Method::Patch, &self.bmc.system, Some(&boot))
            .map(|_| ())
            .map_err(RedfishError::BootOverride)
    }
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
        let bmc = super::Bmc::new(&super::BmcOptions {
            endpoint,
            system: "/redfish/v1/Systems/1".into(),
            auth: Some(("u".into(), "p".into())),
            insecure_http: true,
            ..Default::default()
        })
        .unwrap();
        let op = bmc.within(std::time::Duration::from_secs(30));
        assert_eq!(op.power_state().unwrap(), "On");
        server.join().unwrap();
    }
}
