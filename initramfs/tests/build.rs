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

/// The controller's key pair and a node's agent key, in `dir`.
fn key(dir: &Path) {
    lazarus_node::keyfile::generate_controller(
        &dir.join("controller.key"),
        &dir.join("controller.pub"),
    )
    .unwrap();
    lazarus_node::keyfile::generate(&dir.join("node.key")).unwrap();
}

fn opts(kernel: &Path, agent: &Path, dir: &Path, out: &str) -> BuildOptions {
    BuildOptions {
        kernel_dir: kernel.to_owned(),
        agent: agent.to_owned(),
        controller_pub: dir.join("controller.pub"),
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
    assert!(archive.get("etc/lazarus/controller.pub").is_some());
    assert!(archive.get("etc/lazarus/agent.key").is_none());
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

#[test]
fn the_base_image_holds_no_secret_and_a_part_holds_only_the_agent_key() {
    let Some((kernel, agent)) =
        inputs("the_base_image_holds_no_secret_and_a_part_holds_only_the_agent_key")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    key(dir.path());
    build(&opts(&kernel, &agent, dir.path(), "base.gz")).unwrap();
    let mut base = Vec::new();
    std::io::Read::read_to_end(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(dir.path().join("base.gz")).unwrap()),
        &mut base,
    )
    .unwrap();
    // Every secret, in every form it has on disk or in memory: hex (either case) and raw bytes.
    let hex_of = |file: &str| -> String {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        text.trim().rsplit(':').next().unwrap().to_string()
    };
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for secret in [hex_of("controller.key"), hex_of("node.key")] {
        let raw: Vec<u8> = (0..secret.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&secret[i..i + 2], 16).unwrap())
            .collect();
        for form in [
            secret.to_lowercase().into_bytes(),
            secret.to_uppercase().into_bytes(),
            raw,
        ] {
            assert!(!contains(&base, &form), "the base image holds a secret key");
        }
    }
    assert!(contains(&base, hex_of("controller.pub").as_bytes()));

    let part = dir.path().join("node.cpio");
    lazarus_initramfs::write_agent_part(&dir.path().join("node.key"), &part).unwrap();
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&part).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let bytes = std::fs::read(&part).unwrap();
    assert!(contains(&bytes, hex_of("node.key").as_bytes()));
    assert!(!contains(&bytes, hex_of("controller.key").as_bytes()));
    assert!(
        bytes.len() < 1024,
        "a part is the key and its folders: {} bytes",
        bytes.len()
    );
    // One image of both: the part starts at a 4-byte offset, after zeros.
    let joined = lazarus_initramfs::with_part(b"12345", &bytes);
    assert_eq!(&joined[..8], b"12345\0\0\0");
    assert_eq!(&joined[8..], &bytes[..]);
    assert_eq!(lazarus_initramfs::with_part(b"1234", b"x"), b"1234x");
    // The signing key is refused where the public key belongs.
    let mut o = opts(&kernel, &agent, dir.path(), "bad.gz");
    o.controller_pub = dir.path().join("controller.key");
    let err = build(&o).unwrap_err().to_string();
    assert!(err.contains("lazarus-public-key"), "{err}");
}
