//! The controller's keys: its Ed25519 signing key (`[controller] signing_key`), the agent key
//! of every node with a medium made ahead of time (`[controller] agent_keys`, one file per node:
//! `<dir>/<node>.key`), all loaded and checked (mode 0600, format) when the daemon starts, so a
//! missing key is found before a repair needs it rather than during one; and the keys of repairs
//! under way (per-repair media), made at attach and revoked when the repair ends.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::Digest;

use lazarus_node::keyfile::{self, KeyFileError};
use lazarus_proto::{AgentKey, NodeName, SigningKey};

use crate::cluster::Cluster;

/// A key the daemon cannot start without.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("signing key: {0}")]
    Signing(KeyFileError),
    #[error("agent key of {node}: {source} (make it with `lazarus keygen --agent {path}`, then the node's rescue medium with it)")]
    Agent {
        node: NodeName,
        path: PathBuf,
        source: KeyFileError,
    },
}

/// Which of a node's keys an agent speaks with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The key of the repair under way: the agent booted a per-repair medium.
    Repair,
    /// The node's own key: a medium made ahead of time (USB, a rescue entry).
    Node,
}

/// The keys of a running controller.
#[derive(Debug, Clone)]
pub struct Keys {
    pub signing: SigningKey,
    agents: BTreeMap<NodeName, AgentKey>,
    /// Keys of repairs under way, by node; shared by every clone.
    repairs: Arc<Mutex<BTreeMap<String, AgentKey>>>,
}

impl Keys {
    /// Loads the signing key and every node's agent key named by `cluster`. A node whose
    /// provider hands out per-repair media may have no key file.
    pub fn load(cluster: &Cluster) -> Result<Self, KeysError> {
        let signing = keyfile::load_controller(&cluster.controller.signing_key)
            .map_err(KeysError::Signing)?;
        let mut agents = BTreeMap::new();
        let mut owners = std::collections::HashMap::new();
        for n in &cluster.nodes {
            let path = agent_key_path(cluster, &n.name);
            if !n.repair_media().is_empty() && !path.exists() {
                continue;
            }
            let key = keyfile::load(&path).map_err(|source| KeysError::Agent {
                node: n.name.clone(),
                path: path.clone(),
                source,
            })?;
            // By a digest of each key (not the key), so 10,000 nodes are not compared pairwise.
            let digest: [u8; 32] = sha2::Sha256::digest(key.to_hex().as_bytes()).into();
            if let Some(other) = owners.insert(digest, n.name.clone()) {
                log::warn!(
                    "{} and {other} share an agent key: either one's medium speaks for both",
                    n.name
                );
            }
            agents.insert(n.name.clone(), key);
        }
        Ok(Self {
            signing,
            agents,
            repairs: Arc::default(),
        })
    }

    fn repairs(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, AgentKey>> {
        self.repairs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key `node`'s agent most likely speaks with: its repair's while one is under way,
    /// else its own.
    pub fn agent(&self, node: &str) -> Option<AgentKey> {
        self.candidates(node).into_iter().next().map(|(k, _)| k)
    }

    /// The key of `node`'s repair under way, if it has one.
    pub fn repair(&self, node: &str) -> Option<AgentKey> {
        self.repairs().get(node).cloned()
    }

    /// Every key `node`'s agent may speak with, the repair's first.
    pub fn candidates(&self, node: &str) -> Vec<(AgentKey, KeySource)> {
        let mut keys = Vec::new();
        if let Some(k) = self.repair(node) {
            keys.push((k, KeySource::Repair));
        }
        if let Some(k) = self.agents.get(node) {
            keys.push((k.clone(), KeySource::Node));
        }
        keys
    }

    /// Makes `key` the key of `node`'s repair under way (already recorded in the store).
    pub fn set_repair(&self, node: &str, key: AgentKey) {
        self.repairs().insert(node.to_string(), key);
    }

    /// Revokes `node`'s repair key; whether it had one.
    pub fn revoke_repair(&self, node: &str) -> bool {
        self.repairs().remove(node).is_some()
    }

    /// The nodes with a repair key.
    pub fn repair_nodes(&self) -> Vec<String> {
        self.repairs().keys().cloned().collect()
    }
}

/// Where the agent key of `node` lives.
pub fn agent_key_path(cluster: &Cluster, node: &NodeName) -> PathBuf {
    cluster
        .controller
        .agent_keys
        .join(format!("{}.key", node.as_str()))
}
