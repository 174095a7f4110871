//! The API's HTTP server: hyper (HTTP/1.1) on a current-thread tokio runtime that lives on one
//! thread of its own, with every limit in one place. Nothing outside [`super`] sees tokio.
//!
//! Connections are cheap tasks; a flood of idle ones cannot crowd out the operator: past
//! [`MAX_CONNECTIONS`] the oldest connection not running a request is closed for each new one,
//! and a connection that has not sent a whole request head within [`HEAD_TIMEOUT`] is closed
//! anyway. Requests run on blocking threads (the store and agents block), bounded by two budgets
//! so that slow `/api/logs` calls, which wait on an agent, never take the threads
//! `/api/status` needs.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{
    HeaderValue, CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, REFERRER_POLICY,
    WWW_AUTHENTICATE, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

use super::guard::Listener;
use super::stall::Stall;
use super::{socket, Api, HttpError, Reply, Route};
use crate::api_token::ApiToken;
use crate::cluster::ApiSection;
use crate::daemon::shared::lock;

/// Connections held open at once on each listener; past it the oldest idle one is closed. Each
/// listener counts its own, so a flood on TCP never closes a connection on the socket.
pub const MAX_CONNECTIONS: usize = 256;
/// The largest request head (request line and headers); a larger one is answered 431 and the
/// connection closed.
pub const MAX_HEAD: usize = 16 * 1024;
/// Headers in one request.
pub const MAX_HEADERS: usize = 64;
/// The time to send a request's whole head, from connecting or from the previous answer.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A write (an answer the client does not read) that makes no progress for this long closes
/// the connection.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The same for reads; longer than any route's deadline, since hyper may wait on a read while a
/// route runs.
const READ_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest request body (no route reads one; a POST may carry a JSON document).
pub const MAX_BODY: usize = 64 * 1024;
/// The time to send a body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Routes running at once, `/api/logs` aside.
pub const MAX_WORKING: usize = 16;
/// `/api/logs` calls running at once; more are answered 503 at once.
pub const MAX_LOGS: usize = 4;
/// How long a route may take, and waiting for a free worker.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long `/api/logs` may wait on its agent: within the CLI's own 30 s, so the CLI shows the
/// server's reason.
pub const LOGS_DEADLINE: Duration = Duration::from_secs(25);

/// Binds the listeners of `section` (errors here stop the daemon from starting) and serves
/// `api` on them from a thread of its own until the process ends.
pub fn start(api: Api, section: &ApiSection) -> Result<(), HttpError> {
    // Everything that can be refused is checked before the socket is made.
    let gid = section.group.as_deref().map(socket::group_id).transpose()?;
    let tcp = match section.listen {
        None => None,
        Some(addr) => {
            let file = section
                .token_file
                .as_ref()
                .ok_or(HttpError::NoToken(addr))?;
            let token = ApiToken::load(file)?;
            let l = std::net::TcpListener::bind(addr).map_err(|e| HttpError::Tcp(addr, e))?;
            if !addr.ip().is_loopback() {
                log::warn!(
                    "API: listening on {addr} beyond this host; the token crosses the network \
                     in clear unless a TLS proxy fronts it"
                );
            }
            Some((l, Listener::tcp(token, addr, &section.hosts)))
        }
    };
    let unix = socket::bind(&section.socket, gid)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .max_blocking_threads(MAX_WORKING + MAX_LOGS)
        .thread_name("lazarus-api")
        .build()
        .map_err(HttpError::Runtime)?;
    let (unix, tcp) = {
        let _in = rt.enter();
        unix.set_nonblocking(true).map_err(HttpError::Runtime)?;
        let unix = tokio::net::UnixListener::from_std(unix).map_err(HttpError::Runtime)?;
        let tcp = match tcp {
            None => None,
            Some((l, guard)) => {
                l.set_nonblocking(true).map_err(HttpError::Runtime)?;
                let l = tokio::net::TcpListener::from_std(l).map_err(HttpError::Runtime)?;
                Some((l, guard))
            }
        };
        (unix, tcp)
    };
    let ctx = Arc::new(Ctx {
        api: Arc::new(api),
        working: Arc::new(Semaphore::new(MAX_WORKING)),
        logs: Arc::new(Semaphore::new(MAX_LOGS)),
    });
    std::thread::Builder::new()
        .name("lazarus-api".into())
        .spawn(move || {
            rt.block_on(async move {
                if let Some((l, guard)) = tcp {
                    tokio::spawn(accept_tcp(l, Arc::new(guard), ctx.clone()));
                }
                accept_unix(unix, ctx).await;
            });
        })
        .map_err(HttpError::Runtime)?;
    Ok(())
}

/// What every connection shares.
struct Ctx {
    api: Arc<Api>,
    working: Arc<Semaphore>,
    logs: Arc<Semaphore>,
}

async fn accept_unix(l: tokio::net::UnixListener, ctx: Arc<Ctx>) {
    let guard = Arc::new(Listener::Unix);
    let conns = Arc::new(Connections::default());
    let mut warned = None;
    loop {
        match l.accept().await {
            Ok((s, _)) => Connections::open(&conns, &ctx, s, guard.clone()),
            Err(e) => accept_failed(&e, &mut warned).await,
        }
    }
}

async fn accept_tcp(l: tokio::net::TcpListener, guard: Arc<Listener>, ctx: Arc<Ctx>) {
    let conns = Arc::new(Connections::default());
    let mut warned = None;
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                Connections::open(&conns, &ctx, s, guard.clone());
            }
            Err(e) => accept_failed(&e, &mut warned).await,
        }
    }
}

/// Out of file descriptors or memory: wait a little (the idle connections time out), warning
/// at most once a minute.
async fn accept_failed(e: &std::io::Error, warned: &mut Option<Instant>) {
    if !matches!(warned, Some(t) if t.elapsed() < Duration::from_secs(60)) {
        log::warn!("API: accepting a connection: {e}");
        *warned = Some(Instant::now());
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// The open connections of one listener, oldest first, and whether each is running a request.
#[derive(Default)]
struct Connections {
    inner: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    next: u64,
    open: BTreeMap<u64, Open>,
}

struct Open {
    abort: AbortHandle,
    busy: Arc<AtomicBool>,
}

/// Takes a connection out of the registry when its task ends, however it ends.
struct Leave(Arc<Connections>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        lock(&self.0.inner).open.remove(&self.1);
    }
}

/// Marks a connection idle again when its request ends.
struct Idle(Arc<AtomicBool>);

impl Drop for Idle {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Connections {
    /// Serves `io` as a new connection, closing the oldest idle one if there are too many.
    fn open<T>(conns: &Arc<Self>, ctx: &Arc<Ctx>, io: T, listener: Arc<Listener>)
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (id, evicted) = {
            let mut reg = lock(&conns.inner);
            let mut evicted = None;
            if reg.open.len() >= MAX_CONNECTIONS {
                let oldest_idle = reg
                    .open
                    .iter()
                    .find(|(_, c)| !c.busy.load(Ordering::SeqCst))
                    .map(|(id, _)| *id);
                match oldest_idle.and_then(|id| reg.open.remove(&id)) {
                    Some(c) => evicted = Some(c.abort),
                    // Every connection is running a request: the new one is closed.
                    None => return,
                }
            }
            reg.next += 1;
            (reg.next, evicted)
        };
        let busy = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (leave, ctx, busy) = (Leave(conns.clone(), id), ctx.clone(), busy.clone());
            async move {
                let _leave = leave;
                connection(io, listener, ctx, busy).await;
            }
        });
        // The task cannot have run yet (this runtime has one thread, busy here until it awaits),
        // so its `Leave` comes after this insert.
        lock(&conns.inner).open.insert(
            id,
            Open {
                abort: task.abort_handle(),
                busy,
            },
        );
        if let Some(abort) = evicted {
            abort.abort();
        }
    }
}

/// Serves one connection until it closes, fails or stalls.
async fn connection<T>(io: T, listener: Arc<Listener>, ctx: Arc<Ctx>, busy: Arc<AtomicBool>)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(Stall::new(io, READ_STALL_TIMEOUT, STALL_TIMEOUT));
    let service = service_fn(move |req| {
        let (listener, ctx, busy) = (listener.clone(), ctx.clone(), busy.clone());
        async move {
            busy.store(true, Ordering::SeqCst);
            let _idle = Idle(busy);
            let reply = answer(&listener, &ctx, req).await;
            Ok::<_, Infallible>(respond(reply))
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .serve_connection(io, service)
        .await;
    if let Err(e) = served {
        log::debug!("API connection: {e}");
    }
}

/// The answer to `req`: refused by the guard, or its route's answer within the route's budget.
async fn answer(listener: &Listener, ctx: &Ctx, req: Request<Incoming>) -> Reply {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let public = super::web::page(&parts.method, path).is_some();
    if let Err(refused) = listener.check(&parts.method, &parts.headers, public) {
        return refused;
    }
    let route = match Route::parse(&parts.method, path) {
        Ok(r) => r,
        Err(none) => return none,
    };
    // No route takes a body, but one may come (a JSON document); read it within bounds so the
    // connection stays usable, and refuse one that is not JSON.
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => return Reply::error(408, "the request body did not arrive in time"),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            return Reply::error(413, format!("the request body is over {MAX_BODY} bytes"))
        }
        Ok(Err(e)) => return Reply::error(400, format!("reading the request body: {e}")),
        Ok(Ok(b)) => {
            let b = b.to_bytes();
            if !b.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(&b).is_err() {
                return Reply::error(400, "the request body is not JSON");
            }
        }
    }
    let (permit, deadline) = if matches!(route, Route::Logs(_)) {
        match ctx.logs.clone().try_acquire_owned() {
            Ok(p) => (p, LOGS_DEADLINE),
            Err(_) => {
                return Reply::error(
                    503,
                    format!("{MAX_LOGS} log requests are waiting on agents; try again later"),
                )
            }
        }
    } else {
        match tokio::time::timeout(DEADLINE, ctx.working.clone().acquire_owned()).await {
            Ok(Ok(p)) => (p, DEADLINE),
            _ => return Reply::error(503, "the API is busy; try again"),
        }
    };
    let api = ctx.api.clone();
    // The permit goes with the work: a route still running past its deadline keeps its place
    // in the budget until it returns.
    let work = tokio::task::spawn_blocking(move || {
        let reply = api.answer(&route);
        drop(permit);
        reply
    });
    match tokio::time::timeout(deadline, work).await {
        Ok(Ok(reply)) => reply,
        Ok(Err(e)) => Reply::error(500, format!("answering the request: {e}")),
        Err(_) => Reply::error(504, format!("no answer within {} s", deadline.as_secs())),
    }
}

/// `reply` as an HTTP response.
fn respond(reply: Reply) -> Response<Full<Bytes>> {
    let body = match reply.body {
        std::borrow::Cow::Borrowed(b) => Bytes::from_static(b.as_bytes()),
        std::borrow::Cow::Owned(b) => Bytes::from(b),
    };
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() =
        StatusCode::from_u16(reply.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(reply.kind));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(
        CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(super::web::CONTENT_SECURITY_POLICY),
    );
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if reply.code == 401 {
        h.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}
