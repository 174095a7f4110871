//! Feeds arbitrary bytes to the flag record decoder. Nothing may panic; a record that decodes must
//! encode back to the same slot bytes.
#![no_main]

use lazarus_proto::flag::{FlagRecord, SlotsView, SLOT_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let view = SlotsView::decode(data);
    let _ = view.record();
    if data.len() >= SLOT_LEN {
        if let Ok(record) = FlagRecord::decode(&data[..SLOT_LEN]) {
            let again = record.encode().expect("a decoded record encodes");
            assert_eq!(FlagRecord::decode(&again).expect("re-decodes"), record);
        }
    }
});
