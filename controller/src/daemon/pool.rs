//! The agent connections: where each node's agent answers and which key it speaks with (both
//! learnt from its `Ready`), and one authenticated connection per agent (its own session),
//! reused and used by one caller at a time.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lazarus_proto::{AgentKey, Request, Response, Status};

use super::shared::lock;
use crate::agent_client::{AgentClient, ClientError};
use crate::cluster::Node;
use crate::keys::Keys;

/// How long connecting to an agent and each of its answers may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

/// The controller's connections to agents.
#[derive(Debug)]
pub struct AgentPool {
    keys: Keys,
    /// Where each node's agent answers (from its `Ready`).
    addrs: Mutex<HashMap<String, SocketAddr>>,
    /// The key each node's agent announced itself with (its repair's or its own).
    spoken: Mutex<HashMap<String, AgentKey>>,
    /// One connection slot per node.
    clients: Mutex<HashMap<String, Arc<Mutex<Option<AgentClient>>>>>,
    /// Nodes with a poll in flight: a slow agent gets one poll at a time, not one per tick.
    polling: Mutex<HashSet<String>>,
}

impl AgentPool {
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            addrs: Mutex::default(),
            spoken: Mutex::default(),
            clients: Mutex::default(),
            polling: Mutex::default(),
        }
    }

    /// Records where `node`'s agent answers and the key it announced itself with. A kept
    /// connection to an agent of another key (an earlier boot) is dropped.
    pub fn set_agent(&self, node: &str, addr: SocketAddr, key: AgentKey) {
        lock(&self.addrs).insert(node.to_string(), addr);
        if lock(&self.spoken).insert(node.to_string(), key.clone()) != Some(key) {
            lock(&self.clients).remove(node);
        }
    }

    /// Forgets `node`'s agent address (before a new rescue boot).
    pub fn forget_addr(&self, node: &str) {
        lock(&self.addrs).remove(node);
    }

    /// Forgets all of `node`'s agent: address, key and connection (its repair key was revoked).
    pub fn forget(&self, node: &str) {
        lock(&self.addrs).remove(node);
        lock(&self.spoken).remove(node);
        lock(&self.clients).remove(node);
    }

    /// Where `n`'s agent answers: its announced address, or its rescue address.
    fn addr(&self, n: &Node) -> SocketAddr {
        lock(&self.addrs)
            .get(n.name.as_str())
            .copied()
            .unwrap_or_else(|| SocketAddr::new(n.rescue.address, lazarus_proto::AGENT_PORT))
    }

    /// Sends `request` to `n`'s agent over the node's one connection (made on first use, made
    /// again once if a kept one has gone stale).
    pub fn call(&self, n: &Node, request: &Request) -> Result<Response, ClientError> {
        let slot = lock(&self.clients)
            .entry(n.name.to_string())
            .or_default()
            .clone();
        let mut client = lock(&slot);
        let addr = self.addr(n).to_string();
        // A kept connection may have gone stale: one more try on a fresh one.
        let mut fresh = false;
        loop {
            let c = match client.as_mut() {
                Some(c) => c,
                None => {
                    let spoken = lock(&self.spoken).get(n.name.as_str()).cloned();
                    let agent_key =
                        spoken.or_else(|| self.keys.agent(&n.name)).ok_or_else(|| {
                            ClientError::Unexpected(
                                self.addr(n),
                                "no agent key for this node".into(),
                            )
                        })?;
                    client.insert(AgentClient::connect(
                        &addr,
                        self.keys.signing.clone(),
                        agent_key,
                        AGENT_TIMEOUT,
                    )?)
                }
            };
            match c.call(request) {
                Ok(r) => return Ok(r),
                // A refusal is an answer, not a broken connection.
                Err(e @ ClientError::Refused(..)) => return Err(e),
                Err(e) if fresh => {
                    *client = None;
                    return Err(e);
                }
                Err(_) => {
                    *client = None;
                    fresh = true;
                }
            }
        }
    }

    /// The controller's keys.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Sends a command whose answer is a `Status`.
    pub fn status(&self, n: &Node, request: &Request) -> Result<Status, ClientError> {
        match self.call(n, request)? {
            Response::Status(s) => Ok(s),
            other => Err(ClientError::Unexpected(self.addr(n), format!("{other:?}"))),
        }
    }

    /// Polls `n`'s agent unless a poll of it is in flight (`None` then).
    pub fn poll(&self, n: &Node) -> Option<Result<Status, ClientError>> {
        if !lock(&self.polling).insert(n.name.to_string()) {
            return None;
        }
        let answer = self.status(n, &Request::GetStatus);
        lock(&self.polling).remove(n.name.as_str());
        Some(answer)
    }
}
