//! Who may hold a connection to a listener that anyone on the network can reach (the agent's
//! command port, the controller's `Ready` port): at most `max_total` connections at once,
//! `max_per_peer` from one address and `max_per_net` from one network (a /24, or a /64 for
//! IPv6). A newcomer over its address's or network's share makes room among its own: the oldest
//! of them that has not authenticated is shut down. A newcomer that finds the whole table full
//! makes room among the connections from addresses that never authenticated; only a newcomer
//! from an address that did (the controller's, once it has spoken) may push out any connection
//! that has not authenticated yet. Only when every connection in the way has authenticated is
//! the newcomer turned away. So idle, trickling or churning peers from a few networks never
//! lock a legitimate one out, as long as each connection also has a deadline for its first
//! frame (the listeners set one).

use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// The connections of one listener.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_peer: usize,
    max_per_net: usize,
    next: AtomicU64,
    slots: Mutex<Vec<Slot>>,
    /// Addresses that have authenticated (the most recent 16).
    trusted: Mutex<std::collections::VecDeque<IpAddr>>,
}

#[derive(Debug)]
struct Slot {
    id: u64,
    peer: IpAddr,
    authenticated: Arc<AtomicBool>,
    /// A handle to shut the connection down when it is evicted.
    stream: TcpStream,
}

/// A connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    peer: IpAddr,
    authenticated: Arc<AtomicBool>,
    admission: Arc<Admission>,
}

impl Ticket {
    /// Marks the connection authenticated: it is no longer evicted to make room, and its address
    /// is trusted from now on.
    pub fn authenticated(&self) {
        self.authenticated.store(true, Ordering::Relaxed);
        let mut trusted = self
            .admission
            .trusted
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !trusted.contains(&self.peer) {
            if trusted.len() == 16 {
                trusted.pop_front();
            }
            trusted.push_back(self.peer);
        }
    }
}

/// The network an address belongs to, for the per-network share: its /24, or its /64.
fn network(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().retain(|s| s.id != self.id);
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_peer: usize, max_per_net: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_peer,
            max_per_net,
            next: AtomicU64::new(0),
            slots: Mutex::new(Vec::new()),
            trusted: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits `stream` from `peer`, evicting the oldest unauthenticated connection in the way if
    /// a limit is reached; `None` (the caller drops the stream) if every one in the way has
    /// authenticated.
    pub fn admit(self: &Arc<Self>, peer: IpAddr, stream: &TcpStream) -> Option<Ticket> {
        let handle = stream.try_clone().ok()?;
        let trusted: Vec<IpAddr> = self
            .trusted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        let mut slots = self.lock();
        let unauthenticated = |s: &Slot| !s.authenticated.load(Ordering::Relaxed);
        let net = network(peer);
        let from_peer = slots.iter().filter(|s| s.peer == peer).count();
        let from_net = slots.iter().filter(|s| network(s.peer) == net).count();
        let evict = if from_peer >= self.max_per_peer {
            Some(
                slots
                    .iter()
                    .position(|s| s.peer == peer && unauthenticated(s)),
            )
        } else if from_net >= self.max_per_net {
            Some(
                slots
                    .iter()
                    .position(|s| network(s.peer) == net && unauthenticated(s)),
            )
        } else if slots.len() >= self.max_total {
            let untrusted = slots
                .iter()
                .position(|s| unauthenticated(s) && !trusted.contains(&s.peer));
            Some(if untrusted.is_none() && trusted.contains(&peer) {
                slots.iter().position(unauthenticated)
            } else {
                untrusted
            })
        } else {
            None
        };
        match evict {
            Some(None) => return None,
            Some(Some(i)) => {
                let old = slots.remove(i);
                let _ = old.stream.shutdown(Shutdown::Both);
            }
            None => {}
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let authenticated = Arc::new(AtomicBool::new(false));
        slots.push(Slot {
            id,
            peer,
            authenticated: authenticated.clone(),
            stream: handle,
        });
        Some(Ticket {
            id,
            peer,
            authenticated,
            admission: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;

    /// A connected pair: (client side, server side).
    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    fn evicted(client: &mut TcpStream) -> bool {
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        matches!(client.read(&mut [0u8; 1]), Ok(0) | Err(_))
    }

    #[test]
    fn the_oldest_unauthenticated_connection_makes_room_and_authenticated_ones_stay() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let admission = Admission::new(3, 8, 8);
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let (mut c0, s0) = pair(&listener);
        let t0 = admission.admit(peer, &s0).unwrap();
        let (_c1, s1) = pair(&listener);
        let t1 = admission.admit(peer, &s1).unwrap();
        t1.authenticated();
        let (_c2, s2) = pair(&listener);
        let t2 = admission.admit(peer, &s2).unwrap();
        t2.authenticated();
        // Full: the newcomer evicts the oldest unauthenticated one (c0), not an authenticated one.
        let (_c3, s3) = pair(&listener);
        let t3 = admission.admit(peer, &s3).unwrap();
        assert!(evicted(&mut c0), "the idle connection was not shut down");
        assert_eq!(admission.len(), 3);
        drop(t0); // its thread ends later; freeing an evicted place changes nothing
        assert_eq!(admission.len(), 3);
        t3.authenticated();
        // Every place authenticated: the newcomer is turned away.
        let (_c4, s4) = pair(&listener);
        assert!(admission.admit(peer, &s4).is_none());
        drop(t1);
        assert_eq!(admission.len(), 2);
        assert!(admission.admit(peer, &s4).is_some());
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let admission = Admission::new(100, 2, 100);
        let noisy: IpAddr = "10.0.0.9".parse().unwrap();
        let (mut c0, s0) = pair(&listener);
        let _t0 = admission.admit(noisy, &s0).unwrap();
        let (_c1, s1) = pair(&listener);
        let _t1 = admission.admit(noisy, &s1).unwrap();
        let (_c2, s2) = pair(&listener);
        let _t2 = admission.admit(noisy, &s2).unwrap();
        assert!(evicted(&mut c0));
        assert_eq!(admission.len(), 2);
        // Another address is not affected by the noisy one.
        let (_c3, s3) = pair(&listener);
        let t3 = admission.admit("10.0.0.1".parse().unwrap(), &s3);
        assert!(t3.is_some());
        assert_eq!(admission.len(), 3);
    }
}
