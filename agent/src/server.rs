//! The agent's protocol server: authenticated commands over TCP, one thread per connection.
//!
//! A frame that fails authentication or freshness is never answered (the connection is closed);
//! a frame of another protocol version gets a `VersionReject` naming ours. The server returns
//! after a `Reboot` was accepted and answered.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lazarus_proto::frame::{read_frame, version_reject, write_frame, CommandOpener};
use lazarus_proto::{AgentKey, WireError};

use crate::service::Agent;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// An idle connection is closed after this long.
const IDLE: Duration = Duration::from_secs(300);

/// Serves `listener` until a `Reboot` is accepted.
pub fn serve(listener: TcpListener, agent: Arc<Agent>, key: AgentKey) -> std::io::Result<()> {
    let opener = Arc::new(Mutex::new(CommandOpener::new(key.clone(), agent.boot_id)));
    let open = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    listener.set_nonblocking(true)?;
    log::info!("listening on {}", listener.local_addr()?);
    loop {
        if agent.reboot_requested() {
            // Let the reply to Reboot leave before the caller reboots.
            std::thread::sleep(Duration::from_millis(200));
            return Ok(());
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if open.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
                    log::warn!("closing connection from {peer}: too many connections");
                    continue;
                }
                open.fetch_add(1, Ordering::Relaxed);
                let (agent, opener, key, open, rejected) = (
                    agent.clone(),
                    opener.clone(),
                    key.clone(),
                    open.clone(),
                    rejected.clone(),
                );
                std::thread::spawn(move || {
                    if let Err(e) = connection(stream, &agent, &opener, &key, &rejected) {
                        log::debug!("connection from {peer} ended: {e}");
                    }
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50))
            }
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

fn connection(
    mut stream: TcpStream,
    agent: &Arc<Agent>,
    opener: &Mutex<CommandOpener>,
    key: &AgentKey,
    rejected: &AtomicUsize,
) -> Result<(), WireError> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_nodelay(true)?;
    loop {
        let frame = match read_frame(&mut stream) {
            Ok(f) => f,
            Err(WireError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let opened = match opener.lock() {
            Ok(mut o) => o
                .open(&frame)
                .map(|(req, reply)| (req, reply, o.next_counter())),
            Err(p) => {
                let mut o = p.into_inner();
                o.open(&frame)
                    .map(|(req, reply)| (req, reply, o.next_counter()))
            }
        };
        let (request, reply_to, next_counter) = match opened {
            Ok(x) => x,
            Err(e @ WireError::UnknownVersion { .. }) => {
                log::warn!("{e}");
                let _ = stream.write_all(&version_reject());
                return Err(e);
            }
            Err(e) => {
                // Rate-limited: a flood of bad frames must not flood the console.
                let n = rejected.fetch_add(1, Ordering::Relaxed);
                if n < 10 || n.is_power_of_two() {
                    log::warn!(
                        "ignoring a command from {:?}: {e} ({} so far)",
                        stream.peer_addr().ok(),
                        n + 1
                    );
                }
                return Err(e);
            }
        };
        let response = agent.handle(request, next_counter);
        let reply = reply_to.seal_reply(key, &response)?;
        write_frame(&mut stream, &reply)?;
    }
}
