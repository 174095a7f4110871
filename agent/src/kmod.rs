//! Loading kernel modules without udev or modprobe: `modules.dep` for dependencies,
//! `modules.alias` to match the `modalias` of every device in `/sys` (coldplug), and
//! `finit_module(2)`. Both files are written by `lazarus-mkinitramfs`.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::sys;

/// Why a module did not load.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("module {0} is not in the initramfs")]
    Missing(String),
    #[error("opening {0}: {1}")]
    Open(PathBuf, std::io::Error),
    #[error("loading module {0}: {1}")]
    Load(String, rustix::io::Errno),
}

/// The modules of the running kernel that the initramfs carries.
#[derive(Debug, Default)]
pub struct ModuleDb {
    dir: PathBuf,
    /// name → (path relative to `dir`, dependency names)
    modules: HashMap<String, (PathBuf, Vec<String>)>,
    aliases: Vec<(String, String)>,
}

fn name_of(path: &str) -> String {
    Path::new(path)
        .file_name()
        .map(|f| {
            f.to_string_lossy()
                .split('.')
                .next()
                .unwrap_or_default()
                .replace('-', "_")
        })
        .unwrap_or_default()
}

impl ModuleDb {
    /// Reads `<dir>/modules.dep` and `<dir>/modules.alias` (missing files: no modules).
    pub fn open(dir: &Path) -> Self {
        let mut db = Self {
            dir: dir.to_owned(),
            ..Self::default()
        };
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.dep")) {
            for line in text.lines() {
                let Some((path, deps)) = line.split_once(':') else {
                    continue;
                };
                let deps = deps.split_whitespace().map(name_of).collect();
                db.modules
                    .insert(name_of(path), (PathBuf::from(path.trim()), deps));
            }
        }
        if let Ok(text) = std::fs::read_to_string(dir.join("modules.alias")) {
            for line in text.lines() {
                let mut words = line.split_whitespace();
                if let (Some("alias"), Some(pattern), Some(name)) =
                    (words.next(), words.next(), words.next())
                {
                    db.aliases
                        .push((pattern.to_string(), name.replace('-', "_")));
                }
            }
        }
        db
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Loads `name` after its dependencies. Already loaded (EEXIST) is success; a module this
    /// initramfs does not carry is an error naming it.
    pub fn load(&self, name: &str, loaded: &mut BTreeSet<String>) -> Result<(), ModuleError> {
        let name = name.replace('-', "_");
        if loaded.contains(&name) {
            return Ok(());
        }
        let (path, deps) = self
            .modules
            .get(&name)
            .ok_or_else(|| ModuleError::Missing(name.clone()))?;
        loaded.insert(name.clone());
        for d in deps {
            self.load(d, loaded)?;
        }
        let full = self.dir.join(path);
        let file = File::open(&full).map_err(|e| ModuleError::Open(full.clone(), e))?;
        match sys::finit_module(&file) {
            Ok(()) => {
                log::info!("loaded module {name}");
                Ok(())
            }
            Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(ModuleError::Load(name, e)),
        }
    }

    /// The modules whose aliases match `modalias`.
    pub fn matching(&self, modalias: &str) -> Vec<&str> {
        self.aliases
            .iter()
            .filter(|(pattern, _)| glob(pattern.as_bytes(), modalias.as_bytes()))
            .map(|(_, name)| name.as_str())
            .collect()
    }

    /// One coldplug pass: loads the module of every device in `<sys>/devices` with a matching
    /// modalias. Returns how many modules it loaded (run again until 0: new buses bring new
    /// devices).
    pub fn coldplug(&self, sys_root: &Path, loaded: &mut BTreeSet<String>) -> usize {
        let mut wanted = BTreeSet::new();
        let mut stack = vec![sys_root.join("devices")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let Ok(kind) = e.file_type() else { continue };
                if kind.is_dir() {
                    stack.push(e.path());
                } else if e.file_name() == "modalias" {
                    if let Ok(alias) = std::fs::read_to_string(e.path()) {
                        for m in self.matching(alias.trim()) {
                            wanted.insert(m.to_string());
                        }
                    }
                }
            }
        }
        let before = loaded.len();
        for m in wanted {
            if let Err(e) = self.load(&m, loaded) {
                log::warn!("{e}");
            }
        }
        loaded.len() - before
    }
}

/// fnmatch(3) without flags: `*`, `?` and `[...]` (with `!` or `^` negation and ranges).
pub fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, si));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(&p[pi..], s[si]) {
                        if matched {
                            pi += next;
                            si += 1;
                            continue;
                        }
                    } else if s[si] == b'[' {
                        pi += 1;
                        si += 1;
                        continue;
                    }
                }
                c if c == s[si] => {
                    pi += 1;
                    si += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches one byte against a `[...]` class at the start of `p`; returns (matched, class length).
fn class(p: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (p[i] != b']' || first) {
        first = false;
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            matched |= (p[i]..=p[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    (i < p.len()).then_some((matched != negate, i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_fnmatch() {
        for (p, s, want) in [
            ("virtio:d00000002v*", "virtio:d00000002v00001AF4", true),
            ("virtio:d00000001v*", "virtio:d00000002v00001AF4", false),
            (
                "pci:v00001AF4d*sv*sd*bc*sc*i*",
                "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
                true,
            ),
            (
                "pci:v000010ECd0000816[89]sv*",
                "pci:v000010ECd00008168sv1",
                true,
            ),
            (
                "pci:v000010ECd0000816[89]sv*",
                "pci:v000010ECd00008167sv1",
                false,
            ),
            ("a[!b]c", "axc", true),
            ("a[!b]c", "abc", false),
            ("a?c*", "abcdef", true),
            ("*", "", true),
            ("", "x", false),
        ] {
            assert_eq!(glob(p.as_bytes(), s.as_bytes()), want, "{p} ~ {s}");
        }
    }

    #[test]
    fn reads_dep_and_alias_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
             kernel/drivers/virtio/virtio.ko:\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.alias"),
            "alias virtio:d00000002v* virtio_blk\n",
        )
        .unwrap();
        let db = ModuleDb::open(dir.path());
        assert_eq!(db.len(), 2);
        assert_eq!(db.matching("virtio:d00000002v00001AF4"), vec!["virtio_blk"]);
        assert!(db.matching("virtio:d00000001v00001AF4").is_empty());
        let err = db.load("nope", &mut BTreeSet::new()).unwrap_err();
        assert!(
            matches!(&err, ModuleError::Missing(m) if m == "nope"),
            "{err}"
        );
        assert_eq!(err.to_string(), "module nope is not in the initramfs");
    }
}
