//! Health checks of one node: a TCP connection, an HTTP GET answering 2xx, or a command exiting
//! 0, each within a timeout. Plain HTTP only (a health endpoint on the node's own network); an
//! `https://` URL is refused when the cluster file is loaded.
//!
//! [`check_async`] is what the daemon runs, thousands at a time on one runtime: a TCP or HTTP
//! check is a socket and a timer, not a thread; an `exec` check runs its command on the
//! runtime's blocking pool. [`check`] runs one check to its end on a runtime of its own, for
//! callers without one.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::cluster::HealthCheck;
use crate::command::CommandError;

/// The most of an HTTP answer read to find its status line.
const STATUS_LINE_MAX: usize = 1024;

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("tcp {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("{0}: only http:// URLs are checked")]
    NotHttp(String),
    #[error("{url}: {source}")]
    Http { url: String, source: std::io::Error },
    #[error("{url}: not an HTTP answer")]
    NotAnAnswer { url: String },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error(transparent)]
    Exec(#[from] CommandError),
    #[error("no answer within {0:?}")]
    Deadline(Duration),
    #[error("the check's task ended early: {0}")]
    Task(String),
}

impl HealthError {
    /// Whether the check failed for want of something on this machine (file descriptors, local
    /// ports, buffers): it says nothing about the node, and must not count against it.
    pub fn is_local(&self) -> bool {
        use rustix::io::Errno;
        let io = match self {
            Self::Tcp(_, e) | Self::Http { source: e, .. } => e,
            _ => return false,
        };
        [
            Errno::MFILE,
            Errno::NFILE,
            Errno::NOBUFS,
            Errno::NOMEM,
            Errno::ADDRNOTAVAIL,
        ]
        .iter()
        .any(|e| io.raw_os_error() == Some(e.raw_os_error()))
    }
}

/// Runs one check within `timeout`, blocking the caller; `Err` says why it failed.
pub fn check(health: &HealthCheck, timeout: Duration) -> Result<(), HealthError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| HealthError::Task(e.to_string()))?;
    rt.block_on(check_async(health, timeout))
}

/// Runs one check within `timeout` (for the whole exchange: a peer that accepts and trickles its
/// answer does not stretch it); `Err` says why it failed. Needs a tokio runtime with I/O and
/// time enabled.
pub async fn check_async(health: &HealthCheck, timeout: Duration) -> Result<(), HealthError> {
    let work = async {
        match health {
            HealthCheck::Tcp { target } => tokio::net::TcpStream::connect(target)
                .await
                .map(drop)
                .map_err(|e| HealthError::Tcp(*target, e)),
            HealthCheck::Http { url } => http_get(url).await,
            HealthCheck::Exec { command } => {
                let command = command.clone();
                tokio::task::spawn_blocking(move || crate::command::run(&command, &[], timeout))
                    .await
                    .map_err(|e| HealthError::Task(e.to_string()))?
                    .map_err(HealthError::from)
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(HealthError::Deadline(timeout)))
}

/// GET `url`: healthy on a 2xx status line. Redirects are not followed and no proxy is used: the
/// endpoint is on the node's own network. Only the status line is read.
async fn http_get(url: &str) -> Result<(), HealthError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(HealthError::NotHttp(url.to_string()));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let io = |source| HealthError::Http {
        url: url.to_string(),
        source,
    };
    // `host:port`, `[v6]:port`, or either without a port (80).
    let has_port = match authority.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => authority.contains(':'),
    };
    let host_port = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let mut s = tokio::net::TcpStream::connect(host_port.as_str())
        .await
        .map_err(io)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: lazarus\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).await.map_err(io)?;
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < STATUS_LINE_MAX {
        let n = s.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let status = std::str::from_utf8(line)
        .ok()
        .filter(|l| l.starts_with("HTTP/1."))
        .and_then(|l| l.split_ascii_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| HealthError::NotAnAnswer {
            url: url.to_string(),
        })?;
    match status {
        200..=299 => Ok(()),
        status => Err(HealthError::Status {
            url: url.to_string(),
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::time::Instant;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn a_check_that_found_no_file_descriptor_or_port_here_is_not_held_against_the_node() {
        let target: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let errno = |e: rustix::io::Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
        for (e, local) in [
            (rustix::io::Errno::MFILE, true),
            (rustix::io::Errno::ADDRNOTAVAIL, true),
            (rustix::io::Errno::CONNREFUSED, false),
            (rustix::io::Errno::HOSTUNREACH, false),
        ] {
            assert_eq!(HealthError::Tcp(target, errno(e)).is_local(), local, "{e}");
        }
        assert!(!HealthError::Deadline(T).is_local());
    }

    #[test]
    fn tcp_checks_follow_a_real_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        assert!(check(&HealthCheck::Tcp { target }, T).is_ok());
        drop(l);
        assert!(check(&HealthCheck::Tcp { target }, T).is_err());
    }

    #[test]
    fn http_checks_want_a_2xx() {
        for (answer, ok) in [
            ("HTTP/1.1 200 OK\r\n\r\n", true),
            ("HTTP/1.1 503 Unavailable\r\n\r\n", false),
        ] {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/healthz", l.local_addr().unwrap());
            let server = std::thread::spawn(move || {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 512];
                let n = s.read(&mut buf).unwrap();
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1."));
                s.write_all(answer.as_bytes()).unwrap();
            });
            assert_eq!(check(&HealthCheck::Http { url }, T).is_ok(), ok, "{answer}");
            server.join().unwrap();
        }
        assert!(check(
            &HealthCheck::Http {
                url: "https://x/".into()
            },
            T
        )
        .is_err());
    }

    #[test]
    fn exec_checks_want_exit_0_in_time() {
        let run = |c: &[&str], t| {
            check(
                &HealthCheck::Exec {
                    command: c.iter().map(|s| s.to_string()).collect(),
                },
                t,
            )
        };
        assert!(run(&["true"], T).is_ok());
        assert!(run(&["false"], T).is_err());
        assert!(run(&["sleep", "5"], Duration::from_millis(200))
            .unwrap_err()
            .to_string()
            .contains("no answer"));
        assert!(run(&["/nonexistent/check"], T).is_err());
    }

    #[test]
    fn an_http_check_has_one_deadline_for_the_whole_answer() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/healthz", l.local_addr().unwrap());
        // A server that answers one byte at a time, never finishing its headers in time.
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).unwrap();
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: "
                .iter()
                .chain([b'a'; 40].iter())
            {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let start = Instant::now();
        let timeout = Duration::from_millis(300);
        assert!(check(&HealthCheck::Http { url }, timeout).is_err());
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        server.join().unwrap();
    }
}
