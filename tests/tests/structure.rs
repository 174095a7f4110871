//! The shape of the code, checked so it cannot drift: in each crate, no two top-level modules use
//! each other (directly or round a loop); no library source file over 800 lines; nothing stops a
//! process by a name pattern; the controller does not depend on the agent crate.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const CRATES: &[&str] = &[
    "proto",
    "node",
    "agent",
    "controller",
    "initramfs",
    "testkit",
    "tests",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Source without comments and without `#[cfg(test)]` modules (test code may use anything).
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Top-level module → the top-level modules it names as `crate::m`.
fn module_uses(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let top = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(src).ok()?;
        let first = rel
            .components()
            .next()?
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let name = first.trim_end_matches(".rs").to_string();
        (!matches!(name.as_str(), "lib" | "main" | "bin")).then_some(name)
    };
    let modules: BTreeSet<String> = files.iter().filter_map(|p| top(p)).collect();
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(from) = top(f) else { continue };
        let name = f.file_name().unwrap().to_string_lossy();
        if name == "tests.rs" || name == "fake.rs" {
            continue; // test-only modules
        }
        let text = code(&std::fs::read_to_string(f).unwrap());
        for m in &modules {
            if *m == from {
                continue;
            }
            let direct = text.contains(&format!("crate::{m}::"))
                || text.contains(&format!("crate::{m};"))
                || text.contains(&format!("crate::{m},"));
            let grouped = text.split("crate::{").skip(1).any(|rest| {
                rest.split('}')
                    .next()
                    .unwrap_or("")
                    .split([',', ' ', '\n'])
                    .any(|w| w.trim().split("::").next() == Some(m.as_str()))
            });
            if direct || grouped {
                uses.entry(from.clone()).or_default().insert(m.clone());
            }
        }
    }
    uses
}

fn find_cycle(uses: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn walk(
        n: &str,
        uses: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut c = stack[i..].to_vec();
            c.push(n.to_string());
            return Some(c);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in uses.get(n).into_iter().flatten() {
            if let Some(c) = walk(next, uses, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for n in uses.keys() {
        if let Some(c) = walk(n, uses, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_module_uses_a_module_that_uses_it() {
    let root = lazarus_e2e::workspace();
    for krate in CRATES {
        let uses = module_uses(&root.join(krate).join("src"));
        if let Some(c) = find_cycle(&uses) {
            panic!("{krate}: modules use each other: {}", c.join(" -> "));
        }
    }
}

#[test]
fn a_cycle_is_found_when_there_is_one() {
    let mut uses = BTreeMap::new();
    uses.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    uses.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    uses.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(find_cycle(&uses).unwrap(), ["a", "b", "c", "a"]);
    uses.remove("c");
    assert_eq!(find_cycle(&uses), None);
}

#[test]
fn no_library_file_is_over_800_lines() {
    let root = lazarus_e2e::workspace();
    let mut long = Vec::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for f in files {
            let lines = std::fs::read_to_string(&f).unwrap().lines().count();
            if lines > 800 {
                long.push(format!("{} ({lines} lines)", f.display()));
            }
        }
    }
    assert!(long.is_empty(), "split these: {long:?}");
}

#[test]
fn nothing_stops_a_process_by_a_name_pattern() {
    let root = lazarus_e2e::workspace();
    let mut files = Vec::new();
    for dir in CRATES.iter().map(|c| root.join(c)) {
        rust_files(&dir, &mut files);
    }
    for script in std::fs::read_dir(root.join("scripts")).unwrap().flatten() {
        if script.path().is_file() {
            files.push(script.path());
        }
    }
    let banned = [concat!("pk", "ill"), concat!("kill", "all")];
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for word in banned {
            assert!(
                !text
                    .split(|c: char| !c.is_ascii_alphanumeric())
                    .any(|w| w == word),
                "{} uses {word}: stop processes by their pid",
                f.display()
            );
        }
    }
}

#[test]
fn the_controller_does_not_depend_on_the_agent() {
    let manifest = lazarus_e2e::workspace().join("controller/Cargo.toml");
    let text = std::fs::read_to_string(manifest).unwrap();
    assert!(
        !text.contains("lazarus-agent"),
        "the controller knows agents only over the wire (lazarus-proto)"
    );
}
