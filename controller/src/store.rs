//! The controller's memory: the cluster state and the append-only event log, in one embedded
//! ACID database (redb) in the data directory. A transition is committed (state and its events
//! in one transaction) before the daemon acts on it, so a controller killed at any instant
//! restarts from the last committed state: no node promoted twice, no step skipped.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::repair::{ClusterState, Transition};

const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// The replay floors of `Ready`: `"<node>/<boot id hex>"` to (the last counter accepted, the
/// order it was recorded in).
const ANNOUNCED: TableDefinition<&str, (u64, u64)> = TableDefinition::new("announced");
/// The agent keys of repairs under way (per-repair media): node to key (hex). Removed when the
/// repair ends, which revokes the key.
const REPAIR_KEYS: TableDefinition<&str, &str> = TableDefinition::new("repair_keys");
const CLUSTER_KEY: &str = "cluster";

/// Errors of the state store, one per failing step, naming the database file.
#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error("creating the data directory {0}: {1}")]
    CreateDir(PathBuf, std::io::Error),
    #[error("opening state database {0}: {1}")]
    Open(PathBuf, redb::DatabaseError),
    #[error("state database {0}: starting a transaction: {1}")]
    Begin(PathBuf, redb::TransactionError),
    #[error("state database {0}: opening a table: {1}")]
    Table(PathBuf, redb::TableError),
    #[error("state database {0}: {1}")]
    Storage(PathBuf, redb::StorageError),
    #[error("state database {0}: committing: {1}")]
    Commit(PathBuf, redb::CommitError),
    #[error("state database {0}: encoding a record: {1}")]
    Encode(PathBuf, serde_json::Error),
    #[error("state database {0} holds an unreadable record: {1}")]
    Decode(PathBuf, serde_json::Error),
}

/// One logged event, numbered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    pub seq: u64,
    pub transition: Transition,
}

/// The state database.
pub struct Store {
    db: Database,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) `<data_dir>/state.redb`.
    pub fn open(data_dir: &Path) -> Result<Self, StateStoreError> {
        let path = data_dir.join("state.redb");
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StateStoreError::CreateDir(data_dir.to_owned(), e))?;
        let db = Database::create(&path).map_err(|e| StateStoreError::Open(path.clone(), e))?;
        // It holds the agent keys of repairs under way: for the controller's user alone.
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(|e| StateStoreError::CreateDir(path.clone(), e))?;
        Ok(Self { db, path })
    }

    fn begin(&self, e: redb::TransactionError) -> StateStoreError {
        StateStoreError::Begin(self.path.clone(), e)
    }

    fn table(&self, e: redb::TableError) -> StateStoreError {
        StateStoreError::Table(self.path.clone(), e)
    }

    fn storage(&self, e: redb::StorageError) -> StateStoreError {
        StateStoreError::Storage(self.path.clone(), e)
    }

    fn encode(&self, e: serde_json::Error) -> StateStoreError {
        StateStoreError::Encode(self.path.clone(), e)
    }

    fn decode(&self, e: serde_json::Error) -> StateStoreError {
        StateStoreError::Decode(self.path.clone(), e)
    }

    /// `table` for reading; `None` while nothing was ever written to it.
    fn read<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        table: TableDefinition<K, V>,
    ) -> Result<Option<redb::ReadOnlyTable<K, V>>, StateStoreError> {
        let tx = self.db.begin_read().map_err(|e| self.begin(e))?;
        match tx.open_table(table) {
            Ok(t) => Ok(Some(t)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(self.table(e)),
        }
    }

    /// The last committed cluster state, if any.
    pub fn load(&self) -> Result<Option<ClusterState>, StateStoreError> {
        let Some(table) = self.read(STATE)? else {
            return Ok(None);
        };
        let Some(value) = table.get(CLUSTER_KEY).map_err(|e| self.storage(e))? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| self.decode(e))
    }

    /// Commits `state` and appends `transitions` to the event log, atomically and durably.
    pub fn commit(
        &self,
        state: &ClusterState,
        transitions: &[Transition],
    ) -> Result<(), StateStoreError> {
        let bytes = serde_json::to_vec(state).map_err(|e| self.encode(e))?;
        let tx = self.db.begin_write().map_err(|e| self.begin(e))?;
        {
            let mut table = tx.open_table(STATE).map_err(|e| self.table(e))?;
            table
                .insert(CLUSTER_KEY, bytes.as_slice())
                .map_err(|e| self.storage(e))?;
            let mut events = tx.open_table(EVENTS).map_err(|e| self.table(e))?;
            let first = events
                .last()
                .map_err(|e| self.storage(e))?
                .map_or(0, |(k, _)| k.value() + 1);
            for (seq, t) in (first..).zip(transitions) {
                let bytes = serde_json::to_vec(t).map_err(|e| self.encode(e))?;
                events
                    .insert(seq, bytes.as_slice())
                    .map_err(|e| self.storage(e))?;
            }
        }
        tx.commit()
            .map_err(|e| StateStoreError::Commit(self.path.clone(), e))
    }

    /// Records that `counter` was accepted for `node`'s boot `boot`, durably (before the
    /// announcement is acted on): a floor only rises, and each node keeps its `keep` most
    /// recently recorded boots (one node's announcements never push out another's).
    pub fn record_announce(
        &self,
        node: &str,
        boot: &[u8; 16],
        counter: u64,
        keep: usize,
    ) -> Result<(), StateStoreError> {
        let key = format!("{node}/{}", lazarus_proto::BootId(*boot).to_hex());
        let (from, to) = (format!("{node}/"), format!("{node}0")); // '0' follows '/'
        let tx = self.db.begin_write().map_err(|e| self.begin(e))?;
        {
            let mut table = tx.open_table(ANNOUNCED).map_err(|e| self.table(e))?;
            let mut entries: Vec<(String, u64, u64)> = Vec::new();
            for entry in table
                .range(from.as_str()..to.as_str())
                .map_err(|e| self.storage(e))?
            {
                let (k, v) = entry.map_err(|e| self.storage(e))?;
                let (c, seq) = v.value();
                entries.push((k.value().to_string(), c, seq));
            }
            let next = table
                .iter()
                .map_err(|e| self.storage(e))?
                .filter_map(Result::ok)
                .map(|(_, v)| v.value().1)
                .max()
                .map_or(0, |m| m + 1);
            let floor = entries
                .iter()
                .find(|(k, ..)| *k == key)
                .map_or(counter, |(_, c, _)| counter.max(*c));
            table
                .insert(key.as_str(), (floor, next))
                .map_err(|e| self.storage(e))?;
            entries.retain(|(k, ..)| *k != key);
            entries.sort_by_key(|(_, _, seq)| *seq);
            let excess = (entries.len() + 1).saturating_sub(keep);
            for (k, ..) in entries.iter().take(excess) {
                table.remove(k.as_str()).map_err(|e| self.storage(e))?;
            }
        }
        tx.commit()
            .map_err(|e| StateStoreError::Commit(self.path.clone(), e))
    }

    /// Every recorded announcement floor: (node, boot id, last counter).
    pub fn announced(&self) -> Result<Vec<(String, [u8; 16], u64)>, StateStoreError> {
        let Some(table) = self.read(ANNOUNCED)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.storage(e))? {
            let (k, v) = entry.map_err(|e| self.storage(e))?;
            let parsed = k
                .value()
                .rsplit_once('/')
                .and_then(|(node, hex)| Some((node, lazarus_proto::BootId::from_hex(hex)?)));
            if let Some((node, boot)) = parsed {
                out.push((node.to_string(), boot.0, v.value().0));
            }
        }
        Ok(out)
    }

    /// Records `node`'s repair key (`Some`, before the medium holding it is handed out), or
    /// removes it (`None`: the repair ended and the key is revoked), durably.
    pub fn set_repair_key(
        &self,
        node: &str,
        key: Option<&lazarus_proto::AgentKey>,
    ) -> Result<(), StateStoreError> {
        let tx = self.db.begin_write().map_err(|e| self.begin(e))?;
        {
            let mut table = tx.open_table(REPAIR_KEYS).map_err(|e| self.table(e))?;
            match key {
                Some(k) => table
                    .insert(node, k.to_hex().as_str())
                    .map(|_| ())
                    .map_err(|e| self.storage(e))?,
                None => table
                    .remove(node)
                    .map(|_| ())
                    .map_err(|e| self.storage(e))?,
            }
        }
        tx.commit()
            .map_err(|e| StateStoreError::Commit(self.path.clone(), e))
    }

    /// The keys of repairs under way.
    pub fn repair_keys(&self) -> Result<Vec<(String, lazarus_proto::AgentKey)>, StateStoreError> {
        let Some(table) = self.read(REPAIR_KEYS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.storage(e))? {
            let (k, v) = entry.map_err(|e| self.storage(e))?;
            match lazarus_proto::AgentKey::from_hex(v.value()) {
                Ok(key) => out.push((k.value().to_string(), key)),
                Err(e) => log::error!("the stored repair key of {} is unreadable: {e}", k.value()),
            }
        }
        Ok(out)
    }

    /// The latest events of `node`, oldest first: the log read from its newest event backwards
    /// until `enough` holds for what was gathered (newest first) or `max_scan` events were read,
    /// so the cost of a look at one node is bounded however long the log grows.
    pub fn recent_events(
        &self,
        node: &str,
        max_scan: usize,
        enough: impl Fn(&[LoggedEvent]) -> bool,
    ) -> Result<Vec<LoggedEvent>, StateStoreError> {
        let Some(table) = self.read(EVENTS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in table
            .iter()
            .map_err(|e| self.storage(e))?
            .rev()
            .take(max_scan)
        {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let transition: Transition =
                serde_json::from_slice(v.value()).map_err(|e| self.decode(e))?;
            if transition.node == node {
                out.push(LoggedEvent {
                    seq: k.value(),
                    transition,
                });
                if enough(&out) {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The event log, oldest first, optionally for one node.
    pub fn events(&self, node: Option<&str>) -> Result<Vec<LoggedEvent>, StateStoreError> {
        let Some(table) = self.read(EVENTS)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for item in table.iter().map_err(|e| self.storage(e))? {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let transition: Transition =
                serde_json::from_slice(v.value()).map_err(|e| self.decode(e))?;
            if node.is_none_or(|n| n == transition.node) {
                out.push(LoggedEvent {
                    seq: k.value(),
                    transition,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Role;
    use crate::repair::{NodeState, RepairStep, Stage};

    fn state(role: Role) -> ClusterState {
        let mut s = ClusterState::default();
        s.nodes.insert(
            "n1".into(),
            NodeState {
                role,
                healthy: true,
                ok_streak: 1,
                fail_streak: 0,
                repair: None,
                since: 5,
            },
        );
        s
    }

    fn t(node: &str, to: Stage) -> Transition {
        Transition {
            time: 1,
            node: node.into(),
            from: Stage::HEALTHY,
            to,
            reason: "r".into(),
            bytes: None,
        }
    }

    #[test]
    fn state_and_events_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.load().unwrap(), None);
            assert!(store.events(None).unwrap().is_empty());
            store
                .commit(
                    &state(Role::Worker),
                    &[
                        t("n1", Stage::FAILING),
                        t("n2", Stage::Step(RepairStep::Fencing)),
                    ],
                )
                .unwrap();
            store
                .commit(
                    &state(Role::Standby),
                    &[t("n1", Stage::Step(RepairStep::Queued))],
                )
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), Some(state(Role::Standby)));
        let all = store.events(None).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), [0, 1, 2]);
        let n1: Vec<Stage> = store
            .events(Some("n1"))
            .unwrap()
            .into_iter()
            .map(|e| e.transition.to)
            .collect();
        assert_eq!(n1, [Stage::FAILING, Stage::Step(RepairStep::Queued)]);
        // Backwards from the newest: stopped by `enough`, or by the number of events read.
        let seqs = |events: Vec<LoggedEvent>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.recent_events("n1", 10, |_| false).unwrap()),
            [0, 2]
        );
        assert_eq!(
            seqs(store.recent_events("n1", 10, |e| !e.is_empty()).unwrap()),
            [2]
        );
        assert_eq!(seqs(store.recent_events("n1", 2, |_| false).unwrap()), [2]);
        assert!(store.recent_events("n9", 10, |_| false).unwrap().is_empty());
    }
}
