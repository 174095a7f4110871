//! The agent's protocol server: commands signed by the controller over TCP, one thread per
//! connection, each connection its own session (opened by `Hello`).
//!
//! Who may hold a connection, and for how long, so that nobody who can merely reach the port can
//! lock the controller out:
//!
//! - A connection is authenticated once a command of its session verified (a `Hello` alone is not
//!   enough: it may be a recording). Until then, everything it sends must arrive within
//!   [`FIRST_FRAME`] of its accept, however it spaces the bytes; an authenticated connection may
//!   stay idle up to [`IDLE`] between commands.
//! - At most [`MAX_CONNECTIONS`] at once, [`MAX_PER_PEER`] from one address and [`MAX_PER_NET`]
//!   from one network ([`Admission`]): when a limit is reached, the oldest unauthenticated
//!   connection in the way is closed to make room (never one from an address that has
//!   authenticated, for a newcomer from one that has not); only when every one in the way is
//!   authenticated is the newcomer turned away.
//!
//! A frame that fails verification or freshness is never answered (the connection is closed); a
//! frame of another protocol version gets a `VersionReject` naming ours. The server returns after
//! a `Reboot` was accepted and answered.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lazarus_node::admission::{Admission, Ticket};
use lazarus_proto::frame::{read_frame_before, version_reject, write_frame, CommandOpener};
use lazarus_proto::{AgentKey, PublicKey, Request, WireError};

use crate::service::Agent;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Connections from one address at once.
pub const MAX_PER_PEER: usize = 8;
/// Connections from one network (a /24 or /64) at once.
pub const MAX_PER_NET: usize = 16;
/// Time a new connection has for its whole first frame.
pub const FIRST_FRAME: Duration = Duration::from_secs(5);
/// Time an authenticated connection may stay idle between commands.
pub const IDLE: Duration = Duration::from_secs(300);

/// The keys of an agent: the controller's public key (what it obeys) and its own agent key
/// (what it authenticates its replies and `Ready` with).
#[derive(Debug, Clone)]
pub struct Keys {
    pub controller: PublicKey,
    pub agent: AgentKey,
}

/// Serves `listener` until a `Reboot` is accepted.
pub fn serve(listener: TcpListener, agent: Arc<Agent>, keys: Keys) -> std::io::Result<()> {
    let admission = Admission::new(MAX_CONNECTIONS, MAX_PER_PEER, MAX_PER_NET);
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
                let accepted = Instant::now();
                let Some(ticket) = admission.admit(peer.ip(), &stream) else {
                    log::warn!("closing a connection from {peer}: every place is authenticated");
                    continue;
                };
                let (agent, keys, rejected) = (agent.clone(), keys.clone(), rejected.clone());
                std::thread::spawn(move || {
                    let conn = Connection {
                        agent: &agent,
                        keys: &keys,
                        rejected: &rejected,
                        ticket: &ticket,
                        accepted,
                    };
                    if let Err(e) = conn.serve(stream) {
                        log::debug!("connection from {peer} ended: {e}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Wait for the next connection (accepted at once), or look at Reboot again.
                let mut fds = [rustix::event::PollFd::new(
                    &listener,
                    rustix::event::PollFlags::IN,
                )];
                let wait = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 200_000_000,
                };
                let _ = rustix::event::poll(&mut fds, Some(&wait));
            }
            Err(e) => {
                log::warn!("accept: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

struct Connection<'a> {
    agent: &'a Arc<Agent>,
    keys: &'a Keys,
    rejected: &'a AtomicUsize,
    ticket: &'a Ticket,
    accepted: Instant,
}

impl Connection<'_> {
    fn serve(&self, mut stream: TcpStream) -> Result<(), WireError> {
        stream.set_nonblocking(false)?;
        stream.set_write_timeout(Some(FIRST_FRAME))?;
        stream.set_nodelay(true)?;
        let mut opener = CommandOpener::new(self.keys.controller, self.agent.boot_id);
        loop {
            let deadline = if opener.authenticated() {
                Instant::now() + IDLE
            } else {
                self.accepted + FIRST_FRAME
            };
            let frame = match read_frame_before(&mut stream, deadline) {
                Ok(f) => f,
                Err(WireError::Closed) => return Ok(()),
                Err(e) => return Err(e),
            };
            let (request, reply_to) = match opener.open(&frame) {
                Ok(x) => x,
                Err(e @ WireError::UnknownVersion { .. }) => {
                    log::warn!("{e}");
                    let _ = stream.write_all(&version_reject());
                    return Err(e);
                }
                Err(e) => {
                    // Rate-limited: a flood of bad frames must not flood the console.
                    let n = self.rejected.fetch_add(1, Ordering::Relaxed);
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
            let mut session = 0;
            if request == Request::Hello {
                let mut bytes = [0u8; 8];
                lazarus_node::random::fill(&mut bytes)?;
                session = u64::from_le_bytes(bytes);
                opener.begin(session);
            } else {
                self.ticket.authenticated();
            }
            let response = self.agent.handle(request, session);
            let reply = reply_to.seal_reply(&self.keys.agent, &response)?;
            write_frame(&mut stream, &reply)?;
        }
    }
}
