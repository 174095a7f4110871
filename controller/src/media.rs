//! The controller's rescue-media server, so a BMC's InsertMedia, an iPXE script or a `command`
//! provider fetch the rescue medium from the controller itself and `image_url` needs no other
//! web server:
//!
//! - `GET`/`HEAD /media/NAME` serves `NAME` from the media folder (`[controller] media`): media
//!   made ahead of time.
//! - `GET`/`HEAD /r/TOKEN/{rescue.iso,vmlinuz,initrd.img}` serves one repair's medium
//!   (`[controller.media.rescue]`): the public base initramfs with a part holding that repair's
//!   own agent key appended, alone or on an ISO. [`Media::issue`] makes it at attach under a fresh
//!   random token; the first client address to fetch it owns it (any other gets 404), and it
//!   dies when the agent it booted has announced itself with the key ([`Media::withdraw`]), when
//!   the repair ends, or after `ttl`, whichever comes first. Its files are deleted with it.
//!
//! Read-only and small on purpose: names are one plain file name (no `/`, no leading `.`), files
//! are opened without following symlinks, single byte ranges are honoured (BMCs read virtual
//! media in ranges), and at most [`MAX_CLIENTS`] downloads run at once, each on its own thread,
//! so one slow client never blocks the others for long.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lazarus_proto::AgentKey;
use tiny_http::{Header, Method, Request, Response, StatusCode};

use crate::cluster::{MediaSection, Node, RescueMedia};

/// Downloads served at once; more are answered 503.
pub const MAX_CLIENTS: usize = 16;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("listening on {addr} for rescue media: {source}")]
pub struct MediaError {
    pub addr: std::net::SocketAddr,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Why a repair's medium could not be made.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("no [controller.media.rescue]: per-repair media are not configured")]
    NotConfigured,
    #[error("per-repair medium of {node}: {path}: {source}")]
    Io {
        node: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("per-repair ISO of {0}: {1}")]
    Iso(String, lazarus_initramfs::iso::IsoError),
}

/// The rescue-media server's state: the folder of media made ahead of time and the per-repair
/// media issued so far.
pub struct Media {
    dir: PathBuf,
    rescue: Option<RescueMedia>,
    /// Where per-repair media are made: a private folder of the data directory.
    work: PathBuf,
    /// The server's URL as clients reach it (no trailing `/`).
    base_url: String,
    issued: Mutex<HashMap<String, Issued>>,
}

/// One repair's medium.
struct Issued {
    node: String,
    /// Its folder (deleted with it) and the files it serves by name.
    dir: PathBuf,
    files: Vec<(&'static str, PathBuf)>,
    /// The first client that fetched it: the only one served from then on.
    owner: Option<IpAddr>,
    expires: Instant,
}

impl Drop for Issued {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The URLs of one repair's medium, for a provider's placeholders.
pub type RepairUrls = Vec<(&'static str, String)>;

/// The names a repair's medium is served under, and the placeholder of each.
const ISO: (&str, &str) = ("{rescue_iso_url}", "rescue.iso");
const KERNEL: (&str, &str) = ("{rescue_kernel_url}", "vmlinuz");
const INITRD: (&str, &str) = ("{rescue_initrd_url}", "initrd.img");

impl Media {
    /// The server's state for `section`; per-repair media are made under `<data_dir>/media`
    /// (created 0700, emptied: media of an earlier run died with it).
    pub fn new(section: &MediaSection, data_dir: &Path) -> std::io::Result<Self> {
        check_dir(&section.dir)?;
        let work = data_dir.join("media");
        let _ = std::fs::remove_dir_all(&work);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&work)?;
        if let Some(r) = &section.rescue {
            for f in [&r.kernel, &r.initramfs] {
                if !std::fs::metadata(f)?.is_file() {
                    return Err(std::io::Error::other(format!(
                        "{} is not a file",
                        f.display()
                    )));
                }
            }
        }
        let base_url = section
            .rescue
            .as_ref()
            .and_then(|r| r.url.clone())
            .unwrap_or_else(|| format!("http://{}", section.listen));
        Ok(Self {
            dir: section.dir.clone(),
            rescue: section.rescue.clone(),
            work,
            base_url: base_url.trim_end_matches('/').to_string(),
            issued: Mutex::default(),
        })
    }

    fn issued(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        issued.retain(|_, i| i.expires > now);
        issued
    }

    /// Makes `node`'s medium for a repair whose agent key is `key`, at a fresh URL (an earlier
    /// one of the node dies): the files its provider names, and their URLs.
    pub fn issue(&self, node: &Node, key: &AgentKey) -> Result<RepairUrls, IssueError> {
        let rescue = self.rescue.as_ref().ok_or(IssueError::NotConfigured)?;
        self.withdraw(&node.name);
        let wanted = node.repair_media();
        let mut token = [0u8; 16];
        let io = |path: &Path, source| IssueError::Io {
            node: node.name.to_string(),
            path: path.to_owned(),
            source,
        };
        lazarus_node::random::fill(&mut token).map_err(|e| io(&self.work, e))?;
        let token = lazarus_proto::hex::encode(&token);
        let dir = self.work.join(&token);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| io(&dir, e))?;
        let mut issued = Issued {
            node: node.name.to_string(),
            dir: dir.clone(),
            files: Vec::new(),
            owner: None,
            expires: Instant::now() + rescue.ttl,
        };
        let part_bytes = lazarus_initramfs::agent_part(key);
        let part = dir.join("part.cpio");
        private_file(&part, &part_bytes).map_err(|e| io(&part, e))?;
        if wanted.contains(&INITRD.0) {
            let base = std::fs::read(&rescue.initramfs).map_err(|e| io(&rescue.initramfs, e))?;
            let initrd = dir.join(INITRD.1);
            let whole = lazarus_initramfs::with_part(&base, &part_bytes);
            private_file(&initrd, &whole).map_err(|e| io(&initrd, e))?;
            issued.files.push((INITRD.1, initrd));
        }
        if wanted.contains(&KERNEL.0) {
            issued.files.push((KERNEL.1, rescue.kernel.clone()));
        }
        if wanted.contains(&ISO.0) {
            let iso = dir.join(ISO.1);
            lazarus_initramfs::iso::build_iso(&lazarus_initramfs::iso::IsoOptions {
                kernel: rescue.kernel.clone(),
                initrds: vec![rescue.initramfs.clone(), part],
                cmdline: crate::provider::fill(&rescue.cmdline, node, &[]),
                output: iso.clone(),
            })
            .map_err(|e| IssueError::Iso(node.name.to_string(), e))?;
            issued.files.push((ISO.1, iso));
        }
        let urls = [ISO, KERNEL, INITRD]
            .into_iter()
            .filter(|(p, _)| wanted.contains(p))
            .map(|(p, name)| (p, format!("{}/r/{token}/{name}", self.base_url)))
            .collect();
        log::info!(
            "{}: per-repair medium issued (valid {})",
            node.name,
            humantime::format_duration(rescue.ttl)
        );
        self.issued().insert(token, issued);
        Ok(urls)
    }

    /// Ends `node`'s per-repair URLs and deletes their files: its agent has announced itself
    /// with the repair's key, or the repair ended.
    pub fn withdraw(&self, node: &str) {
        self.issued().retain(|_, i| i.node != node);
    }

    /// Per-repair URLs alive now.
    #[cfg(test)]
    fn live(&self) -> usize {
        self.issued().len()
    }

    /// Starts serving on `listen` in background threads; returns the bound address.
    pub fn serve(
        self: &Arc<Self>,
        listen: std::net::SocketAddr,
    ) -> Result<std::net::SocketAddr, MediaError> {
        let server = tiny_http::Server::http(listen).map_err(|source| MediaError {
            addr: listen,
            source,
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(listen);
        let busy = Arc::new(AtomicUsize::new(0));
        let this = self.clone();
        std::thread::spawn(move || {
            for request in server.incoming_requests() {
                if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    let _ = request.respond(Response::empty(StatusCode(503)));
                    continue;
                }
                let (this, busy) = (this.clone(), busy.clone());
                std::thread::spawn(move || {
                    this.route(request);
                    busy.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Ok(addr)
    }

    fn route(&self, request: Request) {
        if !matches!(request.method(), Method::Get | Method::Head) {
            let _ = request.respond(Response::empty(StatusCode(405)));
            return;
        }
        if let Some(name) = file_name(request.url()).map(str::to_string) {
            let path = self.dir.join(&name);
            answer(request, &path, false, &name);
            return;
        }
        let url = request.url().to_string();
        let Some((token, name)) = repair_file(&url) else {
            let _ = request.respond(Response::empty(StatusCode(404)));
            return;
        };
        let client = request.remote_addr().map(|a| a.ip());
        let path = {
            let mut issued = self.issued();
            let found = issued.get_mut(token).and_then(|i| {
                let owner = *i.owner.get_or_insert(client?);
                let path = i.files.iter().find(|(n, _)| *n == name)?.1.clone();
                (Some(owner) == client).then(|| (i.node.clone(), path))
            });
            match found {
                Some((node, path)) => {
                    log::info!("media: {node}'s per-repair {name} to {client:?}");
                    path
                }
                None => {
                    log::warn!("media: refused per-repair {name} to {client:?}");
                    let _ = request.respond(Response::empty(StatusCode(404)));
                    return;
                }
            }
        };
        // The kernel is the operator's configured file (a symlink like /boot/vmlinuz is fine).
        answer(request, &path, true, name);
    }
}

/// Writes `data` to a new file only its owner can read.
fn private_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(data)
}

/// A per-repair request's token and file name: `/r/TOKEN/NAME`.
fn repair_file(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("/r/")?;
    let rest = rest.split(['?', '#']).next()?;
    let (token, name) = rest.split_once('/')?;
    let token_ok = token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit());
    let name_ok = [ISO.1, KERNEL.1, INITRD.1].contains(&name);
    (token_ok && name_ok).then_some((token, name))
}

/// The file a request names, if the name is one plain file name.
fn file_name(url: &str) -> Option<&str> {
    let name = url.strip_prefix("/media/")?;
    let name = name.split(['?', '#']).next()?;
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b));
    plain.then_some(name)
}

/// A `Range: bytes=A-B` header (one range) against a file of `len` bytes: `[start, end)`.
fn range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = header else {
        return Ok(None);
    };
    let spec = h.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        return Err(()); // several ranges: not offered (answered 416)
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", suffix) => {
            let n: u64 = suffix.parse().map_err(|_| ())?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().map_err(|_| ())?, len),
        (a, b) => {
            let b: u64 = b.parse().map_err(|_| ())?;
            (a.parse().map_err(|_| ())?, b.saturating_add(1).min(len))
        }
    };
    if start >= end || start >= len {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// Serves the file at `path` (following a symlink only if `follow`), whole or one range.
fn answer(request: Request, path: &Path, follow: bool, name: &str) {
    let flags = if follow {
        rustix::fs::OFlags::empty()
    } else {
        rustix::fs::OFlags::NOFOLLOW
    };
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .and_then(|f| {
            let meta = f.metadata()?;
            if meta.is_file() {
                Ok((f, meta.len()))
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::NotFound))
            }
        });
    let Ok((mut file, len)) = opened else {
        let _ = request.respond(Response::empty(StatusCode(404)));
        return;
    };
    let range_header = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Range"))
        .map(|h| h.value.as_str().to_string());
    let (status, start, end) = match range(range_header.as_deref(), len) {
        Ok(None) => (200, 0, len),
        Ok(Some((s, e))) => (206, s, e),
        Err(()) => {
            let r = Response::empty(StatusCode(416))
                .with_header(header("Content-Range", &format!("bytes */{len}")));
            let _ = request.respond(r);
            return;
        }
    };
    if file.seek(SeekFrom::Start(start)).is_err() {
        let _ = request.respond(Response::empty(StatusCode(500)));
        return;
    }
    // tiny_http sends headers only for HEAD, with this length.
    let body = file.take(end - start);
    let mut response = Response::new(
        StatusCode(status),
        vec![
            header("Content-Type", "application/octet-stream"),
            header("Accept-Ranges", "bytes"),
        ],
        body,
        Some((end - start) as usize),
        None,
    )
    // A length, never chunks: BMCs size virtual media from Content-Length.
    .with_chunked_threshold(usize::MAX);
    if status == 206 {
        response.add_header(header(
            "Content-Range",
            &format!("bytes {start}-{}/{len}", end - 1),
        ));
    }
    log::info!(
        "media: {} {} ({} bytes)",
        request.method(),
        name,
        end - start
    );
    let _ = request.respond(response);
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid")
}

/// Opens nothing: checks `dir` is a folder, for start-up validation.
fn check_dir(dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(dir)?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{} is not a folder",
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Starts serving the media folder `dir` alone (no per-repair media) on `listen`.
    fn serve(
        listen: std::net::SocketAddr,
        dir: PathBuf,
    ) -> Result<std::net::SocketAddr, MediaError> {
        let media = Arc::new(Media {
            dir,
            rescue: None,
            work: PathBuf::new(),
            base_url: String::new(),
            issued: Mutex::default(),
        });
        media.serve(listen)
    }

    #[test]
    fn only_plain_names_under_media_are_served() {
        assert_eq!(file_name("/media/rescue.iso"), Some("rescue.iso"));
        assert_eq!(file_name("/media/rescue-w1.iso?x=1"), Some("rescue-w1.iso"));
        for bad in [
            "/media/",
            "/media/../cluster.key",
            "/media/a/b",
            "/media/.hidden",
            "/media/%2e%2e",
            "/other/rescue.iso",
            "/media/a b",
        ] {
            assert_eq!(file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn repair_urls_name_a_token_and_one_of_three_files() {
        let t = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            repair_file(&format!("/r/{t}/rescue.iso")),
            Some((t, "rescue.iso"))
        );
        assert_eq!(
            repair_file(&format!("/r/{t}/initrd.img?x")),
            Some((t, "initrd.img"))
        );
        for bad in [
            format!("/r/{t}/part.cpio"),
            format!("/r/{t}/../media/x"),
            format!("/r/{t}"),
            format!("/r/{}/vmlinuz", &t[1..]),
            "/r/0123456789abcdef0123456789abcdeg/vmlinuz".into(),
            format!("/media/{t}/vmlinuz"),
        ] {
            assert_eq!(repair_file(&bad), None, "{bad}");
        }
    }

    /// A media server with per-repair media of `ttl`, and node-1 of the example cluster (its
    /// provider names `{rescue_iso_url}`) changed to name the kernel and initramfs instead.
    fn repair_media(ttl: &str) -> (tempfile::TempDir, Media, crate::cluster::Node) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::create_dir(p.join("media")).unwrap();
        std::fs::write(p.join("vmlinuz"), b"kernel").unwrap();
        std::fs::write(p.join("base.img"), b"base!").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = |n: &str| p.join(n).display().to_string();
        let text = include_str!("../../docs/cluster.example.toml")
            .replace("/var/lib/lazarus/rescue/vmlinuz", &path("vmlinuz"))
            .replace("/var/lib/lazarus/rescue/base.img", &path("base.img"))
            .replace("/var/lib/lazarus/media", &path("media"))
            .replace("10.70.0.1:7480", &format!("127.0.0.1:{port}"))
            .replace("ttl = \"15m\"", &format!("ttl = \"{ttl}\""))
            .replace(
                "image_url = \"{rescue_iso_url}\"",
                "image_url = \"{rescue_kernel_url} {rescue_initrd_url}\"",
            );
        let cluster = crate::cluster::Cluster::parse(&text, "cluster.toml").unwrap();
        let section = cluster.controller.media.clone().unwrap();
        let media = Media::new(&section, &p.join("data")).unwrap();
        (dir, media, cluster.node("node-1").unwrap().clone())
    }

    fn fetch(url: &str) -> (u16, Vec<u8>) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut r = agent.get(url).call().unwrap();
        (r.status().as_u16(), r.body_mut().read_to_vec().unwrap())
    }

    #[test]
    fn a_repair_medium_is_the_base_and_its_key_until_withdrawn_and_its_files_go_with_it() {
        let (dir, media, node) = repair_media("10m");
        let media = Arc::new(media);
        let listen = media.base_url.trim_start_matches("http://").to_string();
        media.serve(listen.parse().unwrap()).unwrap();
        let key = AgentKey::from_bytes([7; 32]);
        let urls = media.issue(&node, &key).unwrap();
        let names: Vec<&str> = urls.iter().map(|(p, _)| *p).collect();
        assert_eq!(names, ["{rescue_kernel_url}", "{rescue_initrd_url}"]);
        let (code, initrd) = fetch(&urls[1].1);
        assert_eq!(code, 200);
        let part = lazarus_initramfs::agent_part(&key);
        assert_eq!(initrd, lazarus_initramfs::with_part(b"base!", &part));
        assert_eq!(fetch(&urls[0].1), (200, b"kernel".to_vec()));
        let files = dir.path().join("data/media");
        assert_eq!(std::fs::read_dir(&files).unwrap().count(), 1);
        // A new attach of the node: the earlier URL dies at once.
        let again = media.issue(&node, &key).unwrap();
        assert_ne!(again[1].1, urls[1].1);
        assert_eq!(fetch(&urls[1].1).0, 404);
        assert_eq!(fetch(&again[1].1).0, 200);
        media.withdraw("node-1");
        assert_eq!(fetch(&again[1].1).0, 404);
        assert_eq!(media.live(), 0);
        assert_eq!(std::fs::read_dir(&files).unwrap().count(), 0, "files left");
    }

    #[test]
    fn an_expired_repair_medium_is_not_served() {
        let (_dir, media, node) = repair_media("0s");
        let media = Arc::new(media);
        let listen = media.base_url.trim_start_matches("http://").to_string();
        media.serve(listen.parse().unwrap()).unwrap();
        let urls = media.issue(&node, &AgentKey::from_bytes([8; 32])).unwrap();
        assert_eq!(fetch(&urls[1].1).0, 404);
        assert_eq!(media.live(), 0);
    }

    #[test]
    fn single_byte_ranges_are_understood_and_others_refused() {
        assert_eq!(range(None, 100), Ok(None));
        assert_eq!(range(Some("bytes=0-9"), 100), Ok(Some((0, 10))));
        assert_eq!(range(Some("bytes=90-"), 100), Ok(Some((90, 100))));
        assert_eq!(range(Some("bytes=-10"), 100), Ok(Some((90, 100))));
        assert_eq!(range(Some("bytes=50-500"), 100), Ok(Some((50, 100))));
        for bad in [
            "bytes=100-",
            "bytes=5-1",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-1",
        ] {
            assert_eq!(range(Some(bad), 100), Err(()), "{bad}");
        }
    }

    #[test]
    fn files_are_served_whole_in_ranges_and_never_outside_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let media = dir.path().join("media");
        std::fs::create_dir(&media).unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(media.join("rescue.iso"), &data).unwrap();
        std::fs::write(dir.path().join("secret"), b"key").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), media.join("link.iso")).unwrap();
        let addr = serve("127.0.0.1:0".parse().unwrap(), media).unwrap();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let get = |path: &str, range: Option<&str>| {
            let mut r = agent.get(&format!("http://{addr}{path}"));
            if let Some(v) = range {
                r = r.header("Range", v);
            }
            let mut resp = r.call().unwrap();
            let status = resp.status().as_u16();
            let body = resp.body_mut().read_to_vec().unwrap();
            (status, body)
        };
        assert_eq!(get("/media/rescue.iso", None), (200, data.clone()));
        assert_eq!(
            get("/media/rescue.iso", Some("bytes=1000-1999")),
            (206, data[1000..2000].to_vec())
        );
        assert_eq!(get("/media/rescue.iso", Some("bytes=200000-")).0, 416);
        assert_eq!(
            get("/media/link.iso", None).0,
            404,
            "a symlink was followed"
        );
        assert_eq!(get("/media/../secret", None).0, 404);
        assert_eq!(get("/media/missing.iso", None).0, 404);
        let head = agent
            .head(&format!("http://{addr}/media/rescue.iso"))
            .call()
            .unwrap();
        assert_eq!(
            head.headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok()),
            Some("100000")
        );
    }
}
