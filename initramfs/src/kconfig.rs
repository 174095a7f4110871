//! Checking a kernel's `.config` against what the agent needs (`kernel-config/agent-needs.config`).
//!
//! In the needs file, `CONFIG_X=y` means X must be built in, `CONFIG_X=m` that built in or a
//! module will do. Comments (`#`) explain each line and are ignored here.

use std::collections::BTreeMap;

/// A kernel config: option name to value (`y`, `m`, a string or number).
pub fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, _)| k.starts_with("CONFIG_"))
        .map(|(k, v)| (k.to_string(), v.trim_matches('"').to_string()))
        .collect()
}

/// The needs the kernel does not meet, each as `CONFIG_X=y (kernel has m)` or `(kernel: not set)`.
pub fn missing(needs: &str, kernel: &BTreeMap<String, String>) -> Vec<String> {
    let mut out = Vec::new();
    for (key, want) in parse(needs) {
        let have = kernel.get(&key).map(String::as_str);
        let ok = match want.as_str() {
            "y" => have == Some("y"),
            "m" => matches!(have, Some("y" | "m")),
            other => have == Some(other),
        };
        if !ok {
            out.push(format!(
                "{key}={want} (kernel: {})",
                have.unwrap_or("not set")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_what_is_missing() {
        let kernel = parse("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n");
        let needs = "# comment\nCONFIG_A=y\nCONFIG_B=m\nCONFIG_B2=m\nCONFIG_C=y\nCONFIG_A=m\n";
        let _ = needs;
        assert_eq!(
            missing("CONFIG_A=y\nCONFIG_B=m\n", &kernel),
            Vec::<String>::new()
        );
        assert_eq!(
            missing("CONFIG_B=y\n", &kernel),
            vec!["CONFIG_B=y (kernel: m)"]
        );
        assert_eq!(
            missing("CONFIG_C=m\n", &kernel),
            vec!["CONFIG_C=m (kernel: not set)"]
        );
    }
}
