//! Where the kernel's interfaces are mounted. Every kernel path the agent reads goes through a
//! `Root`, so tests point it at a temporary tree instead of the real `/sys` and `/dev`.

use std::path::{Path, PathBuf};

/// The kernel filesystem prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// devtmpfs, normally `/dev`.
    pub dev: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
}

impl Default for Root {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            dev: "/dev".into(),
            proc: "/proc".into(),
        }
    }
}

impl Root {
    /// A root whose `sys`, `dev` and `proc` are folders of `base` (for tests).
    pub fn under(base: &Path) -> Self {
        Self {
            sys: base.join("sys"),
            dev: base.join("dev"),
            proc: base.join("proc"),
        }
    }
}
