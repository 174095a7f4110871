//! Who may ask what: the checks every request passes before it reaches a route, from its method
//! and headers alone (pure, no I/O).
//!
//! - Over TCP, every route (`/metrics` too: Prometheus sends a bearer token from a file) needs
//!   `Authorization: Bearer TOKEN` (401 otherwise), except the web view's static files
//!   ([`super::web`]: public code, no data; a browser cannot send a token when it navigates).
//!   Over the Unix socket, the socket's mode and group are the credential.
//! - `Host` must name the listener (403 otherwise): over TCP the listen address, `localhost`,
//!   `127.0.0.1` or `[::1]` with its port, or a name from `hosts`; over the socket `localhost`
//!   (with a port: a browser reaching the socket through a forward such as `ssh -L`) or none. A
//!   web page that rebinds a DNS name to the controller sends its own name.
//! - An `Origin` is refused unless it is `http://` + an accepted `Host` (403); browsers send one
//!   with every cross-site POST, the CLI none.
//! - A POST needs `Content-Type: application/json` (415): a web form cannot send one without a
//!   CORS preflight, which this API never grants.
//!
//! The checks apply to every method, not only POST: a DNS-rebound page could otherwise read
//! `/api/status`.

use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, ORIGIN};
use hyper::{HeaderMap, Method};

use super::Reply;
use crate::api_token::ApiToken;

/// The listener a request came in on, and what it requires.
#[derive(Debug)]
pub enum Listener {
    /// The Unix socket.
    Unix,
    /// TCP: the token, and the `Host` values accepted (lowercase).
    Tcp { token: ApiToken, hosts: Vec<String> },
}

impl Listener {
    /// The TCP listener at `listen`, also reachable as `extra` hosts.
    pub fn tcp(token: ApiToken, listen: std::net::SocketAddr, extra: &[String]) -> Self {
        let port = listen.port();
        let mut hosts = vec![
            listen.to_string(),
            format!("localhost:{port}"),
            format!("127.0.0.1:{port}"),
            format!("[::1]:{port}"),
        ];
        hosts.extend(extra.iter().cloned());
        for h in &mut hosts {
            h.make_ascii_lowercase();
        }
        Self::Tcp { token, hosts }
    }

    /// Passes a request with `method` and `headers`, or says why not. `public`: a file of the
    /// web view, asked without a token.
    pub fn check(&self, method: &Method, headers: &HeaderMap, public: bool) -> Result<(), Reply> {
        let host = headers.get(HOST).map(|h| h.as_bytes());
        let origin = headers.get(ORIGIN).map(|h| h.as_bytes());
        match self {
            Self::Unix => {
                if host.is_some_and(|h| !is_localhost(h)) {
                    return Err(Reply::error(
                        403,
                        "Host must be localhost on the API socket",
                    ));
                }
                if origin.is_some() {
                    return Err(Reply::error(403, "no web origin may use the API socket"));
                }
            }
            Self::Tcp { token, hosts } => {
                let presented = headers
                    .get(AUTHORIZATION)
                    .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
                if !public && !presented.is_some_and(|t| token.matches(t)) {
                    return Err(Reply::error(
                        401,
                        "this API needs Authorization: Bearer <token> (lazarus --token-file)",
                    ));
                }
                let known = |h: &[u8]| hosts.iter().any(|k| h.eq_ignore_ascii_case(k.as_bytes()));
                if !host.is_some_and(known) {
                    return Err(Reply::error(
                        403,
                        "the Host header does not name this API (add it to [controller.api] hosts)",
                    ));
                }
                let same_origin = |o: &[u8]| o.strip_prefix(b"http://").is_some_and(known);
                if origin.is_some_and(|o| !same_origin(o)) {
                    return Err(Reply::error(
                        403,
                        "requests from other web origins are refused",
                    ));
                }
            }
        }
        if method == Method::POST && !is_json(headers) {
            return Err(Reply::error(
                415,
                "a POST needs Content-Type: application/json",
            ));
        }
        Ok(())
    }
}

/// `localhost`, or `localhost:PORT`.
fn is_localhost(host: &[u8]) -> bool {
    let (name, port) = match host.iter().position(|&b| b == b':') {
        Some(i) => (&host[..i], Some(&host[i + 1..])),
        None => (host, None),
    };
    name.eq_ignore_ascii_case(b"localhost")
        && port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit))
}

/// Whether the content type is `application/json` (parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::{HeaderName, HeaderValue};

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    /// Method, headers, the code wanted (200: passed).
    type Case<'a> = (Method, &'a [(HeaderName, &'a str)], u16);

    fn tcp() -> Listener {
        Listener::tcp(
            ApiToken::parse(TOKEN).unwrap(),
            "10.1.2.3:7470".parse().unwrap(),
            &["Ctl.Example.net:7470".into()],
        )
    }

    fn headers(pairs: &[(HeaderName, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), HeaderValue::from_str(v).unwrap()))
            .collect()
    }

    fn code(l: &Listener, method: Method, pairs: &[(HeaderName, &str)]) -> u16 {
        l.check(&method, &headers(pairs), false)
            .map_or_else(|r| r.code, |()| 200)
    }

    fn page_code(l: &Listener, pairs: &[(HeaderName, &str)]) -> u16 {
        l.check(&Method::GET, &headers(pairs), true)
            .map_or_else(|r| r.code, |()| 200)
    }

    #[test]
    fn the_web_views_files_need_no_token_but_the_same_host_and_origin() {
        let l = tcp();
        assert_eq!(page_code(&l, &[(HOST, "10.1.2.3:7470")]), 200);
        assert_eq!(page_code(&l, &[(HOST, "localhost:7470")]), 200);
        assert_eq!(page_code(&l, &[(HOST, "evil.example:7470")]), 403);
        assert_eq!(page_code(&l, &[]), 403);
        assert_eq!(
            page_code(
                &l,
                &[(HOST, "localhost:7470"), (ORIGIN, "http://evil.example")]
            ),
            403
        );
        let s = Listener::Unix;
        assert_eq!(page_code(&s, &[(HOST, "localhost:7470")]), 200);
        assert_eq!(page_code(&s, &[(HOST, "evil.example:7470")]), 403);
    }

    #[test]
    fn tcp_requests_need_the_token_a_known_host_and_no_foreign_origin() {
        let l = tcp();
        let bearer = format!("Bearer {TOKEN}");
        let auth = (AUTHORIZATION, bearer.as_str());
        let json = (CONTENT_TYPE, "application/json; charset=utf-8");
        let table: &[Case] = &[
            (Method::GET, &[(HOST, "10.1.2.3:7470"), auth.clone()], 200),
            (Method::GET, &[(HOST, "LOCALHOST:7470"), auth.clone()], 200),
            (Method::GET, &[(HOST, "[::1]:7470"), auth.clone()], 200),
            (
                Method::GET,
                &[(HOST, "ctl.example.net:7470"), auth.clone()],
                200,
            ),
            (Method::GET, &[(HOST, "10.1.2.3:7470")], 401),
            (
                Method::GET,
                &[(HOST, "10.1.2.3:7470"), (AUTHORIZATION, "Bearer nope")],
                401,
            ),
            (
                Method::GET,
                &[(HOST, "10.1.2.3:7470"), (AUTHORIZATION, TOKEN)],
                401,
            ),
            (
                Method::GET,
                &[(HOST, "evil.example:7470"), auth.clone()],
                403,
            ),
            (Method::GET, &[(HOST, "localhost:80"), auth.clone()], 403),
            (Method::GET, std::slice::from_ref(&auth), 403),
            (
                Method::GET,
                &[
                    (HOST, "localhost:7470"),
                    auth.clone(),
                    (ORIGIN, "http://localhost:7470"),
                ],
                200,
            ),
            (
                Method::POST,
                &[
                    (HOST, "localhost:7470"),
                    auth.clone(),
                    (ORIGIN, "http://evil.example"),
                    json.clone(),
                ],
                403,
            ),
            (
                Method::POST,
                &[
                    (HOST, "localhost:7470"),
                    auth.clone(),
                    (ORIGIN, "null"),
                    json.clone(),
                ],
                403,
            ),
            (
                Method::POST,
                &[(HOST, "localhost:7470"), auth.clone(), json.clone()],
                200,
            ),
            (Method::POST, &[(HOST, "localhost:7470"), auth.clone()], 415),
            (
                Method::POST,
                &[
                    (HOST, "localhost:7470"),
                    auth.clone(),
                    (CONTENT_TYPE, "text/plain"),
                ],
                415,
            ),
        ];
        for (i, (method, pairs, want)) in table.iter().enumerate() {
            assert_eq!(
                code(&l, method.clone(), pairs),
                *want,
                "case {i}: {pairs:?}"
            );
        }
    }

    #[test]
    fn socket_requests_need_no_token_but_no_origin_and_a_local_host() {
        let l = Listener::Unix;
        let json = (CONTENT_TYPE, "application/json");
        assert_eq!(code(&l, Method::GET, &[]), 200);
        assert_eq!(code(&l, Method::GET, &[(HOST, "localhost")]), 200);
        assert_eq!(code(&l, Method::GET, &[(HOST, "evil.example")]), 403);
        // Through a forward (`ssh -L 7470:/run/lazarus/api.sock`) a browser names the port.
        assert_eq!(code(&l, Method::GET, &[(HOST, "localhost:7470")]), 200);
        for bad in [
            "localhost:",
            "localhost:x",
            "localhost:123456",
            "localhost.evil:80",
        ] {
            assert_eq!(code(&l, Method::GET, &[(HOST, bad)]), 403, "{bad}");
        }
        assert_eq!(code(&l, Method::GET, &[(ORIGIN, "http://localhost")]), 403);
        assert_eq!(code(&l, Method::POST, &[(HOST, "localhost"), json]), 200);
        assert_eq!(code(&l, Method::POST, &[(HOST, "localhost")]), 415);
    }
}
