//! The builder against the stock Debian kernel that scripts/test fetches (LAZARUS_KERNEL_DIR)
//! and the static agent it builds (LAZARUS_AGENT_STATIC).

use std::path::{Path, PathBuf};

use lazarus_initramfs::cpio::Node;
use lazarus_initramfs::{assemble, build, BuildError, BuildOptions};

/// The kernel and static agent, or `None` after a loud skip (a failure under scripts/test).
fn inputs(test: &str) -> Option<(PathBuf, PathBuf)> {
    let kernel = std::env::var_os("LAZARUS_KERNEL_DIR").map(PathBuf::from);
    let agent = std::env::var_os("LAZARUS_AGENT_STATIC").map(PathBuf::from);
    match (kernel, agent) {
        (Some(k), Some(a)) if k.exists() && a.exists() => Some((k, a)),
        _ => {
            lazarus_testkit::skip(
                test,
                "set LAZARUS_KERNEL_DIR and LAZARUS_AGENT_STATIC (scripts/test does)",
            );
            None
        }
    }
}

fn key(dir: &Path) -> PathBuf {
    let p = dir.join("cluster.key");
    lazarus_node::keyfile::generate(&p).unwrap();
    p
}

fn opts(kernel: &Path, agent: &Path, dir: &Path, out: &str) -> BuildOptions {
    BuildOptions {
        kernel_dir: kernel.to_owned(),
        agent: agent.to_owned(),
        key_file: dir.join("cluster.key"),
        config: None,
        output: dir.join(out),
    }
}

#[test]
fn builds_reproducibly_with_modules_and_no_shell() {
    let Some((kernel, agent)) = inputs("builds_reproducibly_with_modules_and_no_shell") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    key(dir.path());
    let a = build(&opts(&kernel, &agent, dir.path(), "a.gz")).unwrap();
    build(&opts(&kernel, &agent, dir.path(), "b.gz")).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("a.gz")).unwrap(),
        std::fs::read(dir.path().join("b.gz")).unwrap(),
        "not reproducible"
    );
    for m in [
        "virtio_blk",
        "virtio_net",
        "virtio_pci",
        "nfsv4",
        "ext4",
        "sunrpc",
        "jbd2",
    ] {
        assert!(
            a.modules.iter().any(|x| x == m),
            "{m} missing from {:?}",
            a.modules
        );
    }
    let (archive, _) = assemble(&opts(&kernel, &agent, dir.path(), "c.gz")).unwrap();
    let paths: Vec<&str> = archive.paths().collect();
    for bad in [
        "bin/sh",
        "sh",
        "busybox",
        "bin/busybox",
        "sbin/udevd",
        "usr",
    ] {
        assert!(!paths.contains(&bad), "the initramfs holds {bad}");
    }
    assert!(
        paths
            .iter()
            .all(|p| !p.ends_with("/sh") && !p.contains("busybox") && !p.contains("udev")),
        "{paths:?}"
    );
    assert!(matches!(
        archive.get("init"),
        Some(Node::File {
            executable: true,
            ..
        })
    ));
    assert!(matches!(
        archive.get("dev/console"),
        Some(Node::CharDevice(5, 1))
    ));
    assert!(archive.get("etc/lazarus/cluster.key").is_some());
    let dep = paths
        .iter()
        .find(|p| p.ends_with("modules.dep"))
        .expect("modules.dep");
    let Some(Node::File { data, .. }) = archive.get(dep) else {
        panic!()
    };
    let dep = String::from_utf8_lossy(data);
    assert!(
        dep.lines()
            .any(|l| l.starts_with("kernel/drivers/block/virtio_blk.ko:")
                && l.contains("virtio_ring.ko")),
        "{dep}"
    );
    eprintln!(
        "initramfs: {} bytes compressed, {} modules",
        a.compressed_bytes,
        a.modules.len()
    );
}

#[test]
fn a_dynamic_init_a_weak_kernel_and_a_broken_config_are_refused_by_name() {
    let Some((kernel, agent)) =
        inputs("a_dynamic_init_a_weak_kernel_and_a_broken_config_are_refused_by_name")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    key(dir.path());
    let mut o = opts(&kernel, Path::new("/bin/ls"), dir.path(), "x.gz");
    assert!(matches!(build(&o), Err(BuildError::NotStatic(_))));
    o.agent = agent.clone();

    // A kernel without devtmpfs: a copy of the kernel dir whose config lacks it.
    let weak = dir.path().join("weak");
    std::fs::create_dir_all(weak.join("boot")).unwrap();
    std::os::unix::fs::symlink(kernel.join("lib"), weak.join("lib")).unwrap();
    for e in std::fs::read_dir(kernel.join("boot")).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("config-") {
            let text = std::fs::read_to_string(e.path())
                .unwrap()
                .replace("CONFIG_DEVTMPFS=y", "# CONFIG_DEVTMPFS is not set");
            std::fs::write(weak.join("boot").join(&name), text).unwrap();
        }
    }
    o.kernel_dir = weak;
    let err = build(&o).unwrap_err().to_string();
    assert!(err.contains("CONFIG_DEVTMPFS=y (kernel: not set)"), "{err}");
    o.kernel_dir = kernel.clone();

    let conf = dir.path().join("agent.toml");
    std::fs::write(&conf, "listen_port = 7460\nlisten_prot = 1\n").unwrap();
    o.config = Some(conf.clone());
    let err = build(&o).unwrap_err().to_string();
    assert!(
        err.contains("agent.toml") && err.contains("line 2"),
        "{err}"
    );
    std::fs::write(&conf, "[modules]\nalways = [\"no_such_module\"]\n").unwrap();
    let err = build(&o).unwrap_err().to_string();
    assert!(err.contains("no_such_module"), "{err}");
    assert!(
        !dir.path().join("x.gz").exists(),
        "a refused build wrote its output"
    );
}
