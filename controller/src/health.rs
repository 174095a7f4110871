//! Health checks of one node: a TCP connection, an HTTP GET answering 2xx, or a command exiting
//! 0, each within a timeout. Plain HTTP only (a health endpoint on the node's own network); an
//! `https://` URL is refused when the cluster file is loaded.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::cluster::HealthCheck;
use crate::command::CommandError;

/// Why a health check failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("tcp {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("{0}: only http:// URLs are checked")]
    NotHttp(String),
    #[error("{url}: {source}")]
    Http {
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("{url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error(transparent)]
    Exec(#[from] CommandError),
}

/// Runs one check within `timeout`; `Err` says why it failed.
pub fn check(health: &HealthCheck, timeout: Duration) -> Result<(), HealthError> {
    match health {
        HealthCheck::Tcp { target } => TcpStream::connect_timeout(target, timeout)
            .map(|_| ())
            .map_err(|e| HealthError::Tcp(*target, e)),
        HealthCheck::Http { url } => http_get(url, timeout),
        HealthCheck::Exec { command } => Ok(crate::command::run(command, &[], timeout)?),
    }
}

/// GET `url`: healthy on a 2xx answer within `timeout`, for the whole exchange (a server that
/// trickles its answer does not stretch it). Redirects are not followed and no proxy is used:
/// the endpoint is on the node's own network.
fn http_get(url: &str, timeout: Duration) -> Result<(), HealthError> {
    if !url.starts_with("http://") {
        return Err(HealthError::NotHttp(url.to_string()));
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .user_agent("lazarus")
        .build()
        .into();
    let http_error = |e| HealthError::Http {
        url: url.to_string(),
        source: Box::new(e),
    };
    let response = agent.get(url).call().map_err(http_error)?;
    match response.status().as_u16() {
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
