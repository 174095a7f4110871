//! The plan a node's agent runs, built from the cluster file: where the image and backups are,
//! which disk to write, where the business files go.

use lazarus_proto::{ImageSpec, NetworkPlan, NfsSource, Plan, RestoreFilesystem, RestoreSpec};

use crate::cluster::{Cluster, Node};

/// The plan `plan_id` for `n`, restoring backups older than `failure_time`; `None` if the node's
/// image is not in the cluster file (which loading the file rules out).
pub fn plan_for(cluster: &Cluster, n: &Node, plan_id: &str, failure_time: u64) -> Option<Plan> {
    let image = cluster.images.get(&n.image)?;
    Some(Plan {
        plan_id: plan_id.to_string(),
        network: NetworkPlan {
            address: n.rescue.address,
            prefix_len: n.rescue.prefix_len,
            gateway: n.rescue.gateway,
            interface: n.rescue.interface.clone(),
        },
        nfs: NfsSource {
            server: cluster.nfs.server,
            export: cluster.nfs.export.clone(),
            version: cluster.nfs.version,
            options: cluster.nfs.options.clone(),
        },
        image: ImageSpec {
            path: image.path.clone(),
            format: image.format,
            size: image.size,
            sha256: image.sha256,
            layout: image.layout,
            bmap: image.bmap.clone(),
            index: image.index.clone(),
            mode: image.mode,
        },
        target: n.disk.clone(),
        flag: n.flag.clone(),
        restore: n.restore.as_ref().map(|r| RestoreSpec {
            backups_dir: cluster.nfs.backups.clone(),
            node: n.name.clone(),
            failure_time,
            filesystem: RestoreFilesystem {
                partition: r.partition,
                fstype: r.fstype,
                root: r.root.clone(),
            },
            paths: r.paths.clone(),
            backup_key: Some(r.backup_key),
        }),
        allow_weak_selector: n.allow_weak_selector,
        restore_setid: n.restore.as_ref().is_some_and(|r| r.restore_setid),
        unrestorable: n
            .restore
            .as_ref()
            .map(|r| r.unrestorable)
            .unwrap_or_default(),
        max_backup_bytes: n
            .restore
            .as_ref()
            .map_or(lazarus_proto::DEFAULT_MAX_BACKUP_BYTES, |r| {
                r.max_backup_bytes
            }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../../docs/cluster.example.toml");
    use lazarus_proto::{Unrestorable, DEFAULT_MAX_BACKUP_BYTES};

    #[test]
    fn the_restore_policy_of_a_node_reaches_its_plan_with_safe_defaults() {
        let c = Cluster::parse(EXAMPLE, "cluster.toml").unwrap();
        let plan = plan_for(&c, &c.nodes[0], "p-1", 10).unwrap();
        assert_eq!(
            (plan.restore_setid, plan.unrestorable, plan.max_backup_bytes),
            (false, Unrestorable::Warn, DEFAULT_MAX_BACKUP_BYTES)
        );
        // The node's backup public key travels in the plan.
        assert!(plan.restore.as_ref().and_then(|r| r.backup_key).is_some());
        let unsigned = EXAMPLE.replacen(
            ", backup_key = \"lazarus-backup-public-key:",
            ", backup_kex = \"lazarus-backup-public-key:",
            1,
        );
        let e = Cluster::parse(&unsigned, "cluster.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("backup_key"),
            "a restore without a backup key: {e}"
        );
        let strict = EXAMPLE.replacen(
            "paths = [\"srv\"], backup_key",
            "paths = [\"srv\"], restore_setid = true, unrestorable = \"fatal\", \
             max_backup_bytes = 1073741824, backup_key",
            1,
        );
        assert_ne!(strict, EXAMPLE);
        let c = Cluster::parse(&strict, "cluster.toml").unwrap();
        let plan = plan_for(&c, &c.nodes[0], "p-1", 10).unwrap();
        assert_eq!(
            (plan.restore_setid, plan.unrestorable, plan.max_backup_bytes),
            (true, Unrestorable::Fatal, 1 << 30)
        );
    }
}
