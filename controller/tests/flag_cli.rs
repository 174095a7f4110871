//! The `lazarus flag`, `lazarus keygen` and `lazarus rescue` commands, run as processes on plain
//! files.

mod common;

use std::path::Path;

use std::process::Command;

use common::{fails, ok};

fn show_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(&["flag", "show", "--json", path.to_str().unwrap()])).unwrap()
}

#[test]
fn flag_lifecycle_on_a_plain_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("flag");
    let p = f.to_str().unwrap();
    ok(&["flag", "init", p]);
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 1 << 20);
    let v = show_json(&f);
    assert_eq!(v["state"], "none");
    assert_eq!(v["seq"], 0);
    for key in [
        "state",
        "seq",
        "plan_id",
        "error_code",
        "bytes_done",
        "timestamp",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    ok(&[
        "flag",
        "set",
        p,
        "--state",
        "recovering",
        "--plan-id",
        "n3-1",
    ]);
    let v = show_json(&f);
    assert_eq!(
        (v["state"].as_str(), v["seq"].as_u64()),
        (Some("recovering"), Some(1))
    );
    assert_eq!(v["plan_id"], "n3-1");
    assert!(v["timestamp"].as_u64().unwrap() > 1_700_000_000);
    ok(&[
        "flag",
        "set",
        p,
        "--state",
        "failed",
        "--plan-id",
        "n3-1",
        "--error-code",
        "21",
    ]);
    let v = show_json(&f);
    assert_eq!(
        (v["state"].as_str(), v["error_code"].as_u64()),
        (Some("failed"), Some(21))
    );
    ok(&[
        "flag",
        "set",
        p,
        "--state",
        "recovered",
        "--plan-id",
        "n3-2",
    ]);
    assert_eq!(show_json(&f)["state"], "recovered");
    let text = ok(&["flag", "show", p]);
    assert!(
        text.contains("state:       recovered") && text.contains("n3-2"),
        "{text}"
    );
    ok(&["flag", "clear", p]);
    let v = show_json(&f);
    // Clearing a RECOVERED flag writes both slots (seq 4 and 5), so no stale RECOVERED remains.
    assert_eq!(
        (v["state"].as_str(), v["seq"].as_u64()),
        (Some("none"), Some(5))
    );
    // init on an existing flag file resets it.
    ok(&["flag", "init", p]);
    assert_eq!(show_json(&f)["seq"], 0);
}

#[test]
fn any_single_corrupted_byte_still_reads_and_writes() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("flag");
    let p = f.to_str().unwrap();
    ok(&["flag", "init", p]);
    ok(&["flag", "set", p, "--state", "recovering", "--plan-id", "a"]);
    ok(&["flag", "set", p, "--state", "recovered", "--plan-id", "a"]);
    let clean = std::fs::read(&f).unwrap();
    // Every byte of both slots' headers and CRCs, and a stride through the rest.
    let mut offsets: Vec<usize> = (0..200).chain(4092..4296).chain(8188..8192).collect();
    offsets.extend((200..8192).step_by(61));
    for i in offsets {
        let mut bad = clean.clone();
        bad[i] ^= 0xa5;
        std::fs::write(&f, &bad).unwrap();
        let v = show_json(&f);
        let state = v["state"].as_str().unwrap();
        assert!(
            ["recovered", "recovering"].contains(&state),
            "byte {i}: {v}"
        );
        ok(&[
            "flag",
            "set",
            p,
            "--state",
            "failed",
            "--plan-id",
            "b",
            "--error-code",
            "3",
        ]);
        let v = show_json(&f);
        assert_eq!(
            (v["state"].as_str(), v["plan_id"].as_str()),
            (Some("failed"), Some("b")),
            "byte {i}"
        );
    }
}

#[test]
fn bad_input_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("flag");
    let p = f.to_str().unwrap();
    fails(&["flag", "show", p]); // missing
    fails(&["flag", "show", dir.path().to_str().unwrap()]); // a directory
    std::fs::write(&f, [0u8; 100]).unwrap();
    let err = fails(&["flag", "show", "--json", p]);
    assert!(err.contains("at least"), "{err}");
    std::fs::write(&f, vec![7u8; 1 << 16]).unwrap();
    let err = fails(&["flag", "init", p]);
    assert!(err.contains("refusing"), "{err}");
    assert_eq!(std::fs::read(&f).unwrap(), vec![7u8; 1 << 16]);
    ok(&["flag", "init", "--force", p]);
    fails(&["flag", "set", p, "--state", "resurrected"]);
    fails(&["flag", "set", p, "--state", "failed", "--error-code", "-1"]);
    fails(&[
        "flag",
        "set",
        p,
        "--state",
        "failed",
        "--plan-id",
        &"x".repeat(65),
    ]);
    fails(&[
        "flag",
        "set",
        p,
        "--state",
        "failed",
        "--plan-id",
        "bad\nid",
    ]);
    fails(&["flag", "set", p]);
    fails(&["flag"]);
    fails(&["no-such-command"]);
    fails(&[]);
    assert_eq!(
        show_json(&f)["state"],
        "none",
        "a refused command wrote the flag"
    );
}

#[test]
fn keygen_writes_private_keys_once_and_a_public_key_beside_the_controllers() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("node-1.key");
    ok(&["keygen", "--agent", k.to_str().unwrap()]);
    let text = std::fs::read_to_string(&k).unwrap();
    assert_eq!(text.trim_end().len(), 64);
    assert!(text.trim_end().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(mode(&k), 0o600);
    let err = fails(&["keygen", "--agent", k.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read_to_string(&k).unwrap(), text);
    fails(&["keygen", "--agent", "/nonexistent-dir/k"]);

    let c = dir.path().join("controller.key");
    let out = ok(&["keygen", "--controller", c.to_str().unwrap()]);
    assert!(out.contains("controller.pub"), "{out}");
    let public = dir.path().join("controller.pub");
    assert_eq!((mode(&c), mode(&public)), (0o600, 0o644));
    assert!(std::fs::read_to_string(&c)
        .unwrap()
        .starts_with("lazarus-signing-key:"));
    assert!(std::fs::read_to_string(&public)
        .unwrap()
        .starts_with("lazarus-public-key:"));
    let err = fails(&["keygen", "--controller", c.to_str().unwrap()]);
    assert!(err.contains("already exists"), "{err}");
    // Exactly one kind at a time.
    fails(&["keygen"]);
    fails(&["keygen", "--agent", "a", "--controller", "b"]);
}

/// `lazarus flag show F | head -0`: the reader is gone before anything is written; the command
/// ends quietly with status 0 (no panic, nothing on stderr), text and JSON alike.
#[test]
fn output_to_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("flag");
    let p = f.to_str().unwrap();
    ok(&["flag", "init", p]);
    for args in [&["flag", "show", p][..], &["flag", "show", "--json", p][..]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_lazarus"))
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "lazarus {args:?}: {:?} {err}",
            out.status
        );
        assert!(err.is_empty(), "lazarus {args:?} stderr: {err}");
    }
}

#[test]
fn rescue_entry_commands_refuse_unsafe_loaders_in_one_line_and_install_on_a_folder() {
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp");
    std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
    let (kernel, initramfs) = (dir.path().join("vmlinuz"), dir.path().join("rescue.img"));
    std::fs::write(&kernel, b"k").unwrap();
    std::fs::write(&initramfs, b"i").unwrap();
    let install = |esp: &Path| {
        vec![
            "rescue".to_string(),
            "install".into(),
            "--esp".into(),
            esp.display().to_string(),
            "--kernel".into(),
            kernel.display().to_string(),
            "--initramfs".into(),
            initramfs.display().to_string(),
        ]
    };
    let args = install(&esp);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // No `default` in loader.conf: the rescue entry could become every boot's.
    assert!(fails(&args).contains("no default entry"));
    assert!(!esp.join("EFI/lazarus").exists());
    std::fs::write(esp.join("loader/loader.conf"), "default debian.conf\n").unwrap();
    assert!(ok(&args).contains("lazarus-rescue.conf"));
    // Arming it where systemd-boot did not boot the system (no LoaderInfo) is refused.
    let vars = dir.path().join("efivars");
    std::fs::create_dir_all(&vars).unwrap();
    let esp_s = esp.display().to_string();
    let vars_s = vars.display().to_string();
    assert!(
        fails(&["rescue", "once", "--esp", &esp_s, "--efivars", &vars_s])
            .contains("did not boot this system")
    );
    assert_eq!(std::fs::read_dir(&vars).unwrap().count(), 0);
    assert!(ok(&["rescue", "remove", "--esp", &esp_s]).contains("removed"));
    assert!(
        fails(&["rescue", "once", "--esp", &esp_s, "--efivars", &vars_s])
            .contains("no rescue entry")
    );
}
