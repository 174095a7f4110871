//! The `Ready` listener: accepts agents' announcements, each on a thread of its own (at most
//! [`MAX_CONNECTIONS`], [`MAX_PER_PEER`] from one address, the oldest waiting one shut down to
//! make room), each frame due whole within [`FRAME_DEADLINE`] of the accept: one peer trickling
//! bytes, or forty, holds up no agent's `Ready`.
//!
//! An announcement is matched to a node by MAC or system UUID (read before it is authenticated,
//! only to choose the key), then authenticated under the key of that node's repair under way
//! (a per-repair medium) or the node's own agent key (a medium made ahead of time); its counter must rise
//! above the last one accepted for its boot, a floor kept in the store so a controller restart
//! does not reopen old announcements. Only then is it acknowledged (signed), recorded and passed
//! to the event loop. Anything else is logged and dropped.

use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lazarus_node::admission::Admission;
use lazarus_proto::frame::{read_frame_before, write_frame, AnnounceOpener, RECENT_BOOTS};
use lazarus_proto::{BootId, Ready, Response};

use super::pool::AgentPool;
use super::shared::lock;
use crate::cluster::{Cluster, Node};
use crate::keys::KeySource;
use crate::media::Media;
use crate::repair::Event;
use crate::store::Store;

/// Announcements being received at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Announcements from one address at once.
pub const MAX_PER_PEER: usize = 8;
/// Announcements from one network (a /24 or /64) at once.
pub const MAX_PER_NET: usize = 16;
/// Time an announcing agent has, from its connection, to send its whole frame.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(5);

/// What every announcement thread shares.
pub struct ReadyListener {
    pub cluster: Arc<Cluster>,
    pub pool: Arc<AgentPool>,
    pub store: Arc<Store>,
    pub tx: Sender<Event>,
    /// The per-repair media server, if any.
    pub media: Option<Arc<Media>>,
    opener: Mutex<AnnounceOpener>,
    /// Warnings so far (rate-limited: hostile announcements must not flood the log).
    warned: std::sync::atomic::AtomicUsize,
}

impl ReadyListener {
    /// The listener's state, its replay floors loaded from the store.
    pub fn new(
        cluster: Arc<Cluster>,
        pool: Arc<AgentPool>,
        store: Arc<Store>,
        tx: Sender<Event>,
        media: Option<Arc<Media>>,
    ) -> Result<Self, crate::store::StateStoreError> {
        let mut opener = AnnounceOpener::default();
        for (node, boot, counter) in store.announced()? {
            opener.remember(&node, BootId(boot), counter);
        }
        Ok(Self {
            cluster,
            pool,
            store,
            tx,
            media,
            opener: Mutex::new(opener),
            warned: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Serves `listener` for as long as the process runs.
    pub fn listen(self: Arc<Self>, listener: TcpListener) {
        let admission = Admission::new(MAX_CONNECTIONS, MAX_PER_PEER, MAX_PER_NET);
        for conn in listener.incoming() {
            let Ok(stream) = conn else { continue };
            let accepted = Instant::now();
            let Ok(peer) = stream.peer_addr() else {
                continue;
            };
            let Some(ticket) = admission.admit(peer.ip(), &stream) else {
                continue;
            };
            let this = self.clone();
            std::thread::spawn(move || {
                this.receive(stream, peer, accepted);
                drop(ticket);
            });
        }
    }

    /// Logs a warning about an announcement: the first ten, then every power of two.
    fn warn(&self, what: std::fmt::Arguments) {
        let n = self
            .warned
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < 10 || n.is_power_of_two() {
            log::warn!("{what} ({} so far)", n + 1);
        }
    }

    fn receive(&self, mut s: TcpStream, peer: SocketAddr, accepted: Instant) {
        let _ = s.set_write_timeout(Some(FRAME_DEADLINE));
        let frame = match read_frame_before(&mut s, accepted + FRAME_DEADLINE) {
            Ok(f) => f,
            Err(e) => {
                self.warn(format_args!("Ready from {peer}: {e}"));
                return;
            }
        };
        // Unauthenticated: only to find whose key to check it with.
        let claimed = match frame.peek_announce() {
            Ok(Response::Ready(ready)) => ready,
            Ok(_) => return,
            Err(e) => {
                self.warn(format_args!("Ready from {peer}: {e}"));
                return;
            }
        };
        let Some(n) = matching_node(&self.cluster, &claimed) else {
            self.warn(format_args!(
                "Ready from an unknown machine {peer} ({})",
                claimed.identity.summary()
            ));
            return;
        };
        let candidates = self.pool.keys().candidates(&n.name);
        if candidates.is_empty() {
            // A node of per-repair media with no repair under way: nothing speaks for it.
            self.warn(format_args!(
                "ignoring an announcement for {} from {peer}: no repair of it is under way",
                n.name
            ));
            return;
        }
        // Opened and recorded under one lock: two announcements of one boot commit in order.
        let (boot_id, body, reply, key, source) = {
            let mut opener = lock(&self.opener);
            // The repair's key first (a per-repair medium), then the node's own (media made
            // ahead of time). A failed authentication leaves the opener as it was.
            let mut opened = None;
            let mut last_error = None;
            for (key, source) in candidates {
                match opener.open(n.name.as_str(), &key, &frame) {
                    Ok(x) => {
                        opened = Some((x, key, source));
                        break;
                    }
                    Err(e) => last_error = Some(e),
                }
            }
            let Some(((boot_id, counter, body, reply), key, source)) = opened else {
                if let Some(e) = last_error {
                    self.warn(format_args!(
                        "ignoring an announcement for {} from {peer}: {e}",
                        n.name
                    ));
                }
                return;
            };
            if let Err(e) =
                self.store
                    .record_announce(n.name.as_str(), &boot_id.0, counter, RECENT_BOOTS)
            {
                log::error!("recording {}'s announcement: {e}; not acting on it", n.name);
                return;
            }
            (boot_id, body, reply, key, source)
        };
        let Response::Ready(ready) = body else {
            return;
        };
        match reply.seal_ack(&self.pool.keys().signing) {
            Ok(ack) => {
                let _ = write_frame(&mut s, &ack);
            }
            Err(e) => log::warn!("acknowledging {}'s Ready: {e}", n.name),
        }
        let ip: IpAddr = ready.identity.address.unwrap_or(peer.ip());
        let medium = match source {
            KeySource::Repair => "this repair's medium",
            KeySource::Node => "the node's own medium",
        };
        log::info!("{}: agent ready at {ip} (boot {boot_id}, {medium})", n.name);
        self.pool
            .set_agent(&n.name, SocketAddr::new(ip, lazarus_proto::AGENT_PORT), key);
        if source == KeySource::Repair {
            // The medium has done its work: its URLs die now, not at their expiry.
            if let Some(media) = &self.media {
                media.withdraw(&n.name);
            }
        }
        let _ = self.tx.send(Event::AgentReady {
            node: n.name.to_string(),
            boot_id,
        });
    }
}

/// The node a `Ready` comes from: one of its MACs, or its DMI system UUID.
fn matching_node<'c>(cluster: &'c Cluster, ready: &Ready) -> Option<&'c Node> {
    cluster.nodes.iter().find(|n| {
        let by_mac = n.macs.iter().any(|m| ready.identity.macs.contains(m));
        let by_uuid = n.system_uuid.as_ref().is_some_and(|u| {
            ready
                .identity
                .system_uuid
                .as_ref()
                .is_some_and(|r| r.eq_ignore_ascii_case(u))
        });
        by_mac || by_uuid
    })
}
