//! A reproducible newc ("070701") cpio writer: entries sorted by path, mtime 0, owner 0:0,
//! inode numbers by position, so the same inputs always give the same bytes. No root needed:
//! device nodes are just headers.

use std::collections::BTreeMap;
use std::io::{self, Write};

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File {
        data: Vec<u8>,
        executable: bool,
    },
    /// A character device (major, minor), e.g. /dev/console (5, 1).
    CharDevice(u32, u32),
    Symlink(String),
}

/// The archive's tree, keyed by path without a leading `/`.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, (Node, u32)>,
}

impl Archive {
    /// Adds `path` (and its parent directories) with permission bits `mode`.
    pub fn add(&mut self, path: &str, node: Node, mode: u32) {
        let path = path.trim_start_matches('/').to_string();
        let mut parent = String::new();
        for part in path
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |(_, p)| p)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.entries
                .entry(parent.clone())
                .or_insert((Node::Dir, 0o755));
        }
        self.entries.insert(path, (node, mode));
    }

    pub fn get(&self, path: &str) -> Option<&Node> {
        self.entries
            .get(path.trim_start_matches('/'))
            .map(|(n, _)| n)
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Writes the archive (entries in path order, then the trailer).
    pub fn write(&self, out: &mut impl Write) -> io::Result<u64> {
        let mut w = Counting { inner: out, n: 0 };
        for (ino, (path, (node, mode))) in self.entries.iter().enumerate() {
            let (kind, data, rdev, nlink): (u32, &[u8], (u32, u32), u32) = match node {
                Node::Dir => (0o040000, &[], (0, 0), 2),
                Node::File { data, .. } => (0o100000, data, (0, 0), 1),
                Node::CharDevice(ma, mi) => (0o020000, &[], (*ma, *mi), 1),
                Node::Symlink(target) => (0o120000, target.as_bytes(), (0, 0), 1),
            };
            header(
                &mut w,
                ino as u32 + 1,
                kind | (mode & 0o7777),
                nlink,
                data.len() as u32,
                rdev,
                path,
            )?;
            w.write_all(data)?;
            pad(&mut w)?;
        }
        header(&mut w, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        Ok(w.n)
    }
}

fn header(
    w: &mut Counting<impl Write>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<()> {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    write!(w, "070701")?;
    for f in fields {
        write!(w, "{f:08x}")?;
    }
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w)
}

fn pad(w: &mut Counting<impl Write>) -> io::Result<()> {
    let n = (4 - w.n % 4) % 4;
    w.write_all(&[0u8; 3][..n as usize])
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_gnu_cpio_lists() {
        let mut a = Archive::default();
        a.add(
            "/init",
            Node::File {
                data: b"#!x\n".to_vec(),
                executable: true,
            },
            0o755,
        );
        a.add("/dev/console", Node::CharDevice(5, 1), 0o600);
        a.add(
            "/etc/lazarus/cluster.key",
            Node::File {
                data: b"k".to_vec(),
                executable: false,
            },
            0o600,
        );
        let mut bytes = Vec::new();
        a.write(&mut bytes).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &bytes).unwrap();
        let Ok(out) = std::process::Command::new("cpio")
            .args(["-t", "-v", "-F"])
            .arg(&path)
            .output()
        else {
            eprintln!("cpio(1) not installed; skipping the cross-check");
            return;
        };
        let listing = String::from_utf8_lossy(&out.stdout);
        for want in [
            "dev/console",
            "etc/lazarus/cluster.key",
            "init",
            "etc/lazarus",
        ] {
            assert!(
                listing.lines().any(|l| l.ends_with(want)),
                "{want} missing from:\n{listing}"
            );
        }
        assert!(
            listing.lines().any(|l| l.starts_with("crw-------")
                && l.contains("5,")
                && l.ends_with("dev/console")),
            "{listing}"
        );
        let mut again = Vec::new();
        a.write(&mut again).unwrap();
        assert_eq!(bytes, again, "not reproducible");
    }
}
