//! Health checks of one node: a TCP connection, an HTTP GET answering 2xx, or a command exiting
//! 0, each within a timeout. Plain HTTP only (a health endpoint on the node's own network); an
//! `https://` URL is refused when the cluster file is loaded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::cluster::HealthCheck;

/// Runs one check; `Err` says why it failed.
pub fn check(health: &HealthCheck, timeout: Duration) -> Result<(), String> {
    match health {
        HealthCheck::Tcp { target } => TcpStream::connect_timeout(target, timeout)
            .map(|_| ())
            .map_err(|e| format!("tcp {target}: {e}")),
        HealthCheck::Http { url } => http_get(url, timeout),
        HealthCheck::Exec { command } => crate::command::run(command, &[], timeout),
    }
}

fn http_get(url: &str, timeout: Duration) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// URLs are checked"))?;
    let (hostport, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
    let with_port = if hostport.contains(':') {
        hostport.to_string()
    } else {
        format!("{hostport}:80")
    };
    let addr: SocketAddr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("{url}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| format!("{url}: {e}"))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| format!("{url}: {e}"))?;
    // One write: a request split over several segments confuses minimal servers.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {hostport}\r\nUser-Agent: lazarus\r\n\r\n");
    s.write_all(request.as_bytes())
        .map_err(|e| format!("{url}: {e}"))?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| format!("{url}: {e}"))?;
    let line = String::from_utf8_lossy(&head[..n]);
    let code = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok());
    match code {
        Some(c) if (200..300).contains(&c) => Ok(()),
        Some(c) => Err(format!("{url}: HTTP {c}")),
        None => Err(format!("{url}: not an HTTP answer")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    const T: Duration = Duration::from_secs(2);

    #[test]
    fn tcp_checks_follow_a_real_listener() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = l.local_addr().unwrap();
        assert_eq!(check(&HealthCheck::Tcp { target }, T), Ok(()));
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
                assert!(String::from_utf8_lossy(&buf[..n]).starts_with("GET /healthz HTTP/1.0"));
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
        assert_eq!(run(&["true"], T), Ok(()));
        assert!(run(&["false"], T).is_err());
        assert!(run(&["sleep", "5"], Duration::from_millis(200))
            .unwrap_err()
            .contains("no answer"));
        assert!(run(&["/nonexistent/check"], T).is_err());
    }
}
