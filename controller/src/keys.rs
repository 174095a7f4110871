//! The controller's keys: its Ed25519 signing key (`[controller] signing_key`) and the agent key
//! of every node (`[controller] agent_keys`, one file per node: `<dir>/<node>.key`), all loaded
//! and checked (mode 0600, format) when the daemon starts, so a missing key is found before a
//! repair needs it rather than during one.

use std::collections::BTreeMap;
use std::path::PathBuf;

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

/// The keys of a running controller.
#[derive(Debug, Clone)]
pub struct Keys {
    pub signing: SigningKey,
    agents: BTreeMap<NodeName, AgentKey>,
}

impl Keys {
    /// Loads the signing key and every node's agent key named by `cluster`.
    pub fn load(cluster: &Cluster) -> Result<Self, KeysError> {
        let signing = keyfile::load_controller(&cluster.controller.signing_key)
            .map_err(KeysError::Signing)?;
        let mut agents = BTreeMap::new();
        for n in &cluster.nodes {
            let path = agent_key_path(cluster, &n.name);
            let key = keyfile::load(&path).map_err(|source| KeysError::Agent {
                node: n.name.clone(),
                path: path.clone(),
                source,
            })?;
            if let Some((other, _)) = agents.iter().find(|(_, k)| **k == key) {
                log::warn!(
                    "{} and {other} share an agent key: either one's medium speaks for both",
                    n.name
                );
            }
            agents.insert(n.name.clone(), key);
        }
        Ok(Self { signing, agents })
    }

    /// The agent key of `node`.
    pub fn agent(&self, node: &NodeName) -> Option<&AgentKey> {
        self.agents.get(node)
    }
}

/// Where the agent key of `node` lives.
pub fn agent_key_path(cluster: &Cluster, node: &NodeName) -> PathBuf {
    cluster
        .controller
        .agent_keys
        .join(format!("{}.key", node.as_str()))
}
