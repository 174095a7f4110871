//! The `Ready` listener: accepts agents' authenticated announcements, matches each to a node by
//! MAC or system UUID, acknowledges it, records where the agent answers and tells the event loop.
//! An announcement that does not authenticate or matches no node is logged and dropped.

use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::mpsc::Sender;
use std::time::Duration;

use lazarus_proto::frame::{read_frame, write_frame, AnnounceOpener};
use lazarus_proto::{AgentKey, Ready, Response};

use super::pool::AgentPool;
use crate::cluster::{Cluster, Node};
use crate::repair::Event;

/// How long an announcing agent may take to send its frame.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until the event loop is gone.
pub fn listen(
    listener: TcpListener,
    cluster: &Cluster,
    key: &AgentKey,
    pool: &AgentPool,
    tx: &Sender<Event>,
) {
    let mut opener = AnnounceOpener::default();
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let _ = s.set_read_timeout(Some(READ_TIMEOUT));
        let peer = s.peer_addr().ok();
        let frame = match read_frame(&mut s) {
            Ok(f) => f,
            Err(e) => {
                log::warn!("Ready from {peer:?}: {e}");
                continue;
            }
        };
        let (boot_id, body, reply) = match opener.open(key, &frame) {
            Ok(x) => x,
            Err(e) => {
                log::warn!("ignoring an announcement from {peer:?}: {e}");
                continue;
            }
        };
        let Response::Ready(ready) = body else {
            continue;
        };
        let _ = reply.seal_ack(key).map(|ack| write_frame(&mut s, &ack));
        let Some(n) = matching_node(cluster, &ready) else {
            log::warn!(
                "Ready from an unknown machine {peer:?} (MACs {:?})",
                ready.identity.macs
            );
            continue;
        };
        let ip: IpAddr = ready
            .identity
            .address
            .or(peer.map(|p| p.ip()))
            .unwrap_or(n.rescue.address);
        log::info!("{}: agent ready at {ip} (boot {boot_id})", n.name);
        pool.set_addr(&n.name, SocketAddr::new(ip, lazarus_proto::AGENT_PORT));
        let event = Event::AgentReady {
            node: n.name.to_string(),
            boot_id,
        };
        if tx.send(event).is_err() {
            return;
        }
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
