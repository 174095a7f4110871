//! Feeds arbitrary bytes to the agent's GPT reader as a whole disk (primary and backup header)
//! and as an image's first MiB, with every sector size. Nothing may panic or overflow, and every
//! partition it returns lies inside the disk.
#![no_main]

use lazarus_agent::gpt::{read_disk_bytes, read_gpt_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for sector in [512u64, 4096, 1000] {
        let _ = read_gpt_bytes(data, sector);
        for backup in [false, true] {
            if let Ok(parts) = read_disk_bytes(data, sector, backup) {
                for p in parts {
                    let end = p.start.checked_add(p.len).expect("a partition's end fits");
                    assert!(end <= data.len() as u64, "a partition past the disk: {p:?}");
                }
            }
        }
    }
});
