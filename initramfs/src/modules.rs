//! A kernel's modules: names, dependencies and aliases read from each `.ko`'s `.modinfo`, so no
//! `depmod` run or `modules.dep` is needed from the kernel package.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::elf;

/// One module file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub name: String,
    /// Path relative to `lib/modules/<release>/`.
    pub rel_path: String,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
}

/// Every module of a kernel release, and what is built in.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    pub modules: BTreeMap<String, Module>,
    pub builtin: BTreeSet<String>,
}

/// Module names use `_`; file names and `depends=` may use `-`.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

impl ModuleIndex {
    /// Reads `<modules_dir>` (= `lib/modules/<release>`).
    pub fn read(modules_dir: &Path) -> std::io::Result<Self> {
        let mut index = Self::default();
        if let Ok(text) = std::fs::read_to_string(modules_dir.join("modules.builtin")) {
            for line in text.lines() {
                if let Some(stem) = Path::new(line.trim()).file_stem() {
                    index.builtin.insert(normalize(&stem.to_string_lossy()));
                }
            }
        }
        let mut stack = vec![modules_dir.join("kernel")];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                let path = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(path);
                } else if path.extension().is_some_and(|x| x == "ko") {
                    let bytes = std::fs::read(&path)?;
                    let info = elf::modinfo(&bytes).unwrap_or_default();
                    let name = normalize(&path.file_stem().unwrap_or_default().to_string_lossy());
                    let mut depends: Vec<String> = info
                        .iter()
                        .filter(|(k, _)| k == "depends")
                        .flat_map(|(_, v)| v.split(',').filter(|d| !d.is_empty()).map(normalize))
                        .collect();
                    // `softdep=pre: crc32c` is a module the kernel asks for at init through
                    // modprobe, which the initramfs does not have: treat it as a dependency.
                    depends.extend(softdeps_pre(&info));
                    let aliases = info
                        .iter()
                        .filter(|(k, _)| k == "alias")
                        .map(|(_, v)| v.clone())
                        .collect();
                    let rel_path = path
                        .strip_prefix(modules_dir)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .into_owned();
                    index.modules.insert(
                        name.clone(),
                        Module {
                            name,
                            rel_path,
                            depends,
                            aliases,
                        },
                    );
                }
            }
        }
        Ok(index)
    }

    /// `names` and all their dependencies, dependencies first; built-in ones are left out.
    /// Names neither present nor built in are returned separately.
    pub fn closure(&self, names: &[String]) -> (Vec<&Module>, Vec<String>) {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        let mut missing = Vec::new();
        for name in names {
            let name = normalize(name);
            if self.builtin.contains(&name) {
                continue;
            }
            match (self.modules.contains_key(&name), self.by_alias(&name)) {
                (true, _) => self.visit(&name, &mut seen, &mut order),
                (false, Some(m)) => self.visit(&m.name, &mut seen, &mut order),
                (false, None) => missing.push(name),
            }
        }
        (order, missing)
    }

    /// A module providing `name` as an alias (`crc32c` → `crc32c_generic`, via `crypto-crc32c`).
    fn by_alias(&self, name: &str) -> Option<&Module> {
        let crypto = format!("crypto-{name}");
        self.modules.values().find(|m| {
            m.aliases
                .iter()
                .any(|a| normalize(a) == name || normalize(a) == normalize(&crypto))
        })
    }

    fn visit<'a>(&'a self, name: &str, seen: &mut BTreeSet<String>, order: &mut Vec<&'a Module>) {
        if !seen.insert(name.to_string()) {
            return;
        }
        let Some(m) = self.modules.get(name).or_else(|| self.by_alias(name)) else {
            return;
        };
        if m.name != name && !seen.insert(m.name.clone()) {
            return;
        }
        for d in &m.depends {
            self.visit(d, seen, order);
        }
        order.push(m);
    }
}

fn softdeps_pre(info: &[(String, String)]) -> Vec<String> {
    let mut out = Vec::new();
    for (_, v) in info.iter().filter(|(k, _)| k == "softdep") {
        let mut pre = false;
        for word in v.split_whitespace() {
            match word {
                "pre:" => pre = true,
                "post:" => pre = false,
                name if pre => out.push(normalize(name)),
                _ => {}
            }
        }
    }
    out
}

/// `modules.dep` for the chosen modules, in depmod's format (deps of a module, nearest last).
pub fn modules_dep(index: &ModuleIndex, chosen: &[&Module]) -> String {
    let mut out = String::new();
    for m in chosen {
        let (deps, _) = index.closure(&m.depends);
        let deps: Vec<&str> = deps.iter().rev().map(|d| d.rel_path.as_str()).collect();
        out.push_str(&format!("{}: {}\n", m.rel_path, deps.join(" ")).replace(": \n", ":\n"));
    }
    out
}

/// `modules.alias` for the chosen modules.
pub fn modules_alias(chosen: &[&Module]) -> String {
    let mut out = String::new();
    for m in chosen {
        for a in &m.aliases {
            out.push_str(&format!("alias {a} {}\n", m.name));
        }
    }
    out
}

/// Why an unpacked kernel package has no single kernel release.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("no kernel modules under {0}")]
    None(PathBuf),
    #[error("several kernel releases under {0}: {1}")]
    Several(PathBuf, String),
}

/// The `lib/modules/<release>` folder of an unpacked kernel package, and its release.
pub fn find_release(kernel_dir: &Path) -> Result<(String, PathBuf), ReleaseError> {
    let base = kernel_dir.join("lib/modules");
    let releases: Vec<_> = std::fs::read_dir(&base)
        .map_err(|e| ReleaseError::Read(base.clone(), e))?
        .flatten()
        .filter(|e| e.path().join("kernel").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    match releases.as_slice() {
        [one] => Ok((one.clone(), base.join(one))),
        [] => Err(ReleaseError::None(base)),
        many => Err(ReleaseError::Several(base, many.join(", "))),
    }
}
