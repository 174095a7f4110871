//! The controller's rescue-media server: `GET`/`HEAD /media/NAME` serves `NAME` from the media
//! folder (`[controller] media`), so a BMC's InsertMedia, an iPXE script or a `command` provider
//! fetch the rescue ISO from the controller itself and `image_url` needs no other web server.
//!
//! Read-only and small on purpose: names are one plain file name (no `/`, no leading `.`), files
//! are opened without following symlinks, single byte ranges are honoured (BMCs read virtual
//! media in ranges), and at most [`MAX_CLIENTS`] downloads run at once, each on its own thread
//! with read/write deadlines, so one slow client never blocks the others for long.

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tiny_http::{Header, Method, Request, Response, StatusCode};

/// Downloads served at once; more are answered 503.
pub const MAX_CLIENTS: usize = 16;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("listening on {addr} for rescue media: {source}")]
pub struct MediaError {
    pub addr: std::net::SocketAddr,
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// Starts serving `dir` on `listen` in background threads; returns the bound address.
pub fn serve(
    listen: std::net::SocketAddr,
    dir: PathBuf,
) -> Result<std::net::SocketAddr, MediaError> {
    let server = tiny_http::Server::http(listen).map_err(|source| MediaError {
        addr: listen,
        source,
    })?;
    let addr = server.server_addr().to_ip().unwrap_or(listen);
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
                busy.fetch_sub(1, Ordering::SeqCst);
                let _ = request.respond(Response::empty(StatusCode(503)));
                continue;
            }
            let (dir, busy) = (dir.clone(), busy.clone());
            std::thread::spawn(move || {
                answer(&dir, request);
                busy.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    Ok(addr)
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

fn answer(dir: &Path, request: Request) {
    if !matches!(request.method(), Method::Get | Method::Head) {
        let _ = request.respond(Response::empty(StatusCode(405)));
        return;
    }
    let Some(name) = file_name(request.url()) else {
        let _ = request.respond(Response::empty(StatusCode(404)));
        return;
    };
    let path = dir.join(name);
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)
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
pub fn check_dir(dir: &Path) -> std::io::Result<()> {
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
