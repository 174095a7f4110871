//! Feeds arbitrary bytes to the chunk-index reader (`lazarus_node::index`, through the agent's
//! re-export). Nothing may panic or overflow; an index it accepts encodes back to the same
//! bytes, its chunks cover its image exactly, and a packed one's frames lie back to back.
#![no_main]

use lazarus_agent::image::ChunkIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(idx) = ChunkIndex::decode(data) else {
        return;
    };
    assert_eq!(idx.encode(), data, "an accepted index does not encode back");
    let last = idx.range(idx.len() - 1);
    assert_eq!(last.end, idx.image_size());
    assert!(last.start < last.end);
    let mut at = 0u64;
    for i in 0..idx.len() {
        if let Some((offset, len)) = idx.frame(i) {
            assert_eq!(offset, at);
            at += len as u64;
        }
    }
    // A chunk's check never panics, whatever the length.
    let _ = idx.matches(0, &data[..data.len().min(4096)]);
});
