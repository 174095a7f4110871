//! Found by an attacker's review, kept as regression tests. Review finding: a node's rescue medium holds that node's agent key (its part), yet
//! `build_iso` (used by `lazarus-mkrescue --agent-key`) always writes the image mode 0644: any
//! local user of the machine that made it can read the key out of the ISO and forge the node's
//! `Ready` and replies (docs/protocol.md: "Keep each medium as secret as its key").

use std::os::unix::fs::PermissionsExt;

use lazarus_initramfs::iso::{build_iso, IsoOptions, DEFAULT_CMDLINE};

#[test]
fn a_medium_holding_an_agent_key_is_not_world_readable() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("node.key");
    lazarus_node::keyfile::generate(&key).unwrap();
    let part = dir.path().join("node.part");
    lazarus_initramfs::write_agent_part(&key, &part).unwrap();
    let kernel = dir.path().join("vmlinuz");
    std::fs::write(&kernel, b"not a kernel, only bytes to copy").unwrap();
    let base = dir.path().join("base.img");
    std::fs::write(&base, b"base initramfs bytes").unwrap();
    let output = dir.path().join("node.iso");
    build_iso(&IsoOptions {
        kernel,
        initrds: vec![base, part],
        cmdline: DEFAULT_CMDLINE.into(),
        output: output.clone(),
    })
    .expect("grub-mkrescue, xorriso and mtools are installed here");
    let hex = std::fs::read_to_string(&key).unwrap();
    let iso = std::fs::read(&output).unwrap();
    assert!(
        iso.windows(64).any(|w| w == &hex.as_bytes()[..64]),
        "the medium carries the node's agent key"
    );
    let mode = std::fs::metadata(&output).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode & 0o077,
        0,
        "the medium holding node.key is mode {mode:o}: readable by every local user"
    );
}
