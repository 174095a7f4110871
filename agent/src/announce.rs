//! The `Ready` announcement: the agent tells the controller it booted, until acknowledged.

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use lazarus_proto::frame::{read_frame_before, seal_announce, write_frame};
use lazarus_proto::{Ready, Response, WireError};

use crate::server::Keys;

/// Announces `agent` (its identity read from `root`, reachable at `address`) to `controller` on
/// a thread of its own, until acknowledged. `macs` replaces the MACs read from sysfs (host mode
/// with several agents on one machine).
pub fn spawn_announcer(
    controller: SocketAddr,
    keys: &Keys,
    root: &crate::root::Root,
    agent: &crate::service::Agent,
    address: std::net::IpAddr,
    macs: Option<Vec<lazarus_proto::MacAddr>>,
) {
    let mut identity = crate::identity::read_identity(root);
    identity.address = Some(address);
    if let Some(macs) = macs {
        identity.macs = macs;
    }
    let ready = Ready {
        boot_id: agent.boot_id,
        identity,
        flag: agent.boot_flag.clone(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    };
    let keys = keys.clone();
    std::thread::spawn(move || announce(controller, &keys, &ready, None));
}

/// First retry delay; doubles up to [`MAX_BACKOFF`], each with ±25% jitter.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const TIMEOUT: Duration = Duration::from_secs(5);

/// Announces `ready` to `controller` until it is acknowledged (or `attempts` run out, if set).
/// Returns whether it was acknowledged.
pub fn announce(controller: SocketAddr, keys: &Keys, ready: &Ready, attempts: Option<u32>) -> bool {
    let mut backoff = FIRST_BACKOFF;
    let mut counter = 0u64;
    loop {
        counter += 1;
        match announce_once(controller, keys, ready, counter) {
            Ok(()) => {
                log::info!("controller {controller} acknowledged Ready");
                return true;
            }
            Err(e) => {
                if counter <= 3 || counter.is_power_of_two() {
                    log::warn!("announcing Ready to {controller} (attempt {counter}): {e}");
                }
            }
        }
        if attempts.is_some_and(|a| counter >= u64::from(a)) {
            return false;
        }
        std::thread::sleep(jitter(backoff));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn announce_once(
    controller: SocketAddr,
    keys: &Keys,
    ready: &Ready,
    counter: u64,
) -> Result<(), WireError> {
    let mut stream = TcpStream::connect_timeout(&controller, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let (frame, wait) = seal_announce(
        &keys.agent,
        ready.boot_id,
        counter,
        &Response::Ready(ready.clone()),
    )?;
    write_frame(&mut stream, &frame)?;
    let reply = read_frame_before(&mut stream, std::time::Instant::now() + TIMEOUT)?;
    wait.open_ack(&keys.controller, &reply)
}

/// `d` scaled by a random factor in [0.75, 1.25).
fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = lazarus_node::random::fill(&mut b).map_or(0x8000, |()| u16::from_le_bytes(b));
    d.mul_f64(0.75 + f64::from(r) / 131_072.0)
}
