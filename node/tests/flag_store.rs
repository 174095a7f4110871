//! The flag store on real files: power-safety under torn writes, blank and random partitions,
//! corrupted bytes and sequence wrap.

use std::os::unix::fs::FileExt;

use lazarus_node::flag_store::{
    holds_only_flag_records, plan_write, FlagStore, FlagUpdate, StoreError,
};
use lazarus_proto::flag::{FlagRecord, FlagState, SlotsView, MIN_PARTITION_LEN, SLOT_LEN};
use proptest::prelude::*;

fn update(state: FlagState, plan: &str) -> FlagUpdate {
    FlagUpdate {
        state,
        plan_id: plan.into(),
        error_code: if state == FlagState::Failed { 21 } else { 0 },
        message: format!("{} {plan}", state.name()),
        ..FlagUpdate::default()
    }
}

fn same_content(a: &FlagRecord, u: &FlagUpdate) -> bool {
    a.state == u.state
        && a.plan_id == u.plan_id
        && a.error_code == u.error_code
        && a.message == u.message
}

fn file_with(bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flag");
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn histories() -> Vec<Vec<FlagUpdate>> {
    use FlagState::*;
    vec![
        vec![],
        vec![update(Recovering, "p1")],
        vec![update(Recovering, "p1"), update(Recovered, "p1")],
        vec![
            update(Recovering, "p1"),
            update(Recovered, "p1"),
            update(None, ""),
        ],
        vec![update(Recovering, "p1"), update(Failed, "p1")],
    ]
}

/// Tears each durable write of every kind of update, on top of every history, at every 512-byte
/// boundary and at pseudo-random byte offsets: the store reads the old or the new record.
#[test]
fn a_torn_write_reads_back_as_the_old_or_the_new_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut offsets: Vec<usize> = (0..=SLOT_LEN).step_by(512).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        offsets.push((x % SLOT_LEN as u64) as usize);
    }
    let mut cases = 0;
    for (h, history) in histories().iter().enumerate() {
        for next in [
            FlagState::Recovering,
            FlagState::Recovered,
            FlagState::Failed,
            FlagState::None,
        ] {
            let path = dir.path().join(format!("flag-{h}-{}", next.name()));
            let store = FlagStore::format(&path, false).unwrap();
            for u in history {
                store.write(u).unwrap();
            }
            let before_bytes = std::fs::read(&path).unwrap();
            let before = store.read().unwrap();
            let new = update(next, "p2");
            let writes = plan_write(&store.view().unwrap(), &new, 42).unwrap();
            for (w, (slot, bytes)) in writes.iter().enumerate() {
                for &k in &offsets {
                    std::fs::write(&path, &before_bytes).unwrap();
                    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                    for (slot, bytes) in &writes[..w] {
                        file.write_all_at(bytes, (*slot * SLOT_LEN) as u64).unwrap();
                    }
                    file.write_all_at(&bytes[..k], (*slot * SLOT_LEN) as u64)
                        .unwrap();
                    let got = FlagStore::open(&path).unwrap().read().unwrap();
                    assert!(
                        got == before || same_content(&got, &new),
                        "history {h}, next {next:?}, write {w}, torn at {k}: read {got:?}"
                    );
                    if w > 0 || k == SLOT_LEN {
                        assert!(same_content(&got, &new), "completed write lost at {k}");
                    }
                    if k == 0 && w == 0 {
                        assert_eq!(got, before);
                    }
                    cases += 1;
                }
            }
        }
    }
    assert!(cases > 1000, "only {cases} cases");
}

#[test]
fn an_all_zero_partition_reads_as_none() {
    let (_d, path) = file_with(&vec![0u8; MIN_PARTITION_LEN as usize]);
    let rec = FlagStore::open(&path).unwrap().read().unwrap();
    assert_eq!(rec.state, FlagState::None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn a_random_partition_reads_as_none(bytes in proptest::collection::vec(any::<u8>(), MIN_PARTITION_LEN as usize)) {
        let (_d, path) = file_with(&bytes);
        let store = FlagStore::open(&path).unwrap();
        prop_assert_eq!(store.read().unwrap().state, FlagState::None);
        // And the first write on it works and reads back.
        store.write(&update(FlagState::Recovering, "p")).unwrap();
        prop_assert_eq!(store.read().unwrap().state, FlagState::Recovering);
    }
}

/// Any single damaged byte reads as the current or the previous record, never as an error, and a
/// RECOVERED record that was superseded never comes back.
#[test]
fn a_single_corrupted_byte_never_resurrects_recovered() {
    use FlagState::*;
    for history in [
        vec![
            update(Recovering, "a"),
            update(Recovered, "a"),
            update(Recovering, "b"),
        ],
        vec![update(Recovered, "a"), update(None, "")],
        vec![update(Recovered, "a"), update(Failed, "b")],
    ] {
        let (_d, path) = file_with(&[]);
        std::fs::remove_file(&path).unwrap();
        let store = FlagStore::format(&path, false).unwrap();
        for u in &history {
            store.write(u).unwrap();
        }
        let current = store.read().unwrap();
        let clean = std::fs::read(&path).unwrap();
        for i in 0..MIN_PARTITION_LEN as usize {
            let mut bad = clean.clone();
            bad[i] ^= 0xff;
            std::fs::write(&path, &bad).unwrap();
            let got = FlagStore::open(&path).unwrap().read().unwrap();
            assert_ne!(
                got.state, Recovered,
                "byte {i} brought back RECOVERED after {history:?}"
            );
            assert!(got == current || got.seq < current.seq, "byte {i}: {got:?}");
        }
    }
}

#[test]
fn sequence_numbers_wrap_without_losing_order() {
    let (_d, path) = file_with(&vec![0u8; MIN_PARTITION_LEN as usize]);
    let rec = FlagRecord {
        seq: u64::MAX - 1,
        ..FlagRecord::default()
    };
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&rec.encode().unwrap(), 0).unwrap();
    let store = FlagStore::open(&path).unwrap();
    let mut last = store.read().unwrap().seq;
    for i in 0..6 {
        let state = if i % 2 == 0 {
            FlagState::Recovering
        } else {
            FlagState::Failed
        };
        let got = store.write(&update(state, &format!("p{i}"))).unwrap();
        assert_eq!(got.seq, last.wrapping_add(1), "write {i}");
        assert_eq!(got.plan_id, format!("p{i}"));
        last = got.seq;
    }
    assert!(last < 10, "the sequence wrapped past u64::MAX: {last}");
}

#[test]
fn format_refuses_foreign_data_unless_forced() {
    let (_d, path) = file_with(&vec![0x42u8; 1 << 16]);
    assert!(matches!(
        FlagStore::format(&path, false),
        Err(StoreError::NotAFlagPartition(_))
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        vec![0x42u8; 1 << 16],
        "refusal wrote something"
    );
    FlagStore::format(&path, true).unwrap();
    let view = SlotsView::decode(&std::fs::read(&path).unwrap());
    assert_eq!(view.current, None);
}

#[test]
fn a_too_small_file_is_refused() {
    let (_d, path) = file_with(&[0u8; 100]);
    assert!(matches!(
        FlagStore::open(&path),
        Err(StoreError::TooSmall(_, 100))
    ));
}

#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = FlagStore::open(dir.path()).unwrap_err();
    assert!(
        matches!(err, StoreError::Open(..) | StoreError::NotFileOrDevice(_)),
        "{err}"
    );
}

#[test]
fn format_never_creates_a_file_under_dev() {
    let path = std::path::Path::new("/dev/lazarus-no-such-partition-p3");
    assert!(matches!(
        FlagStore::format(path, false),
        Err(StoreError::NoSuchDevice(_))
    ));
    assert!(!path.exists(), "a regular file appeared in /dev");
}

#[test]
fn a_guarded_write_refuses_foreign_data_and_writes_nothing() {
    // A partition table's first sectors, a filesystem superblock at 1 KiB: what a typo'd flag
    // path (`/dev/sdb` for `/dev/sdb3`) would name.
    let mut foreign = vec![0u8; 1 << 16];
    foreign[510..512].copy_from_slice(&[0x55, 0xaa]);
    foreign[512..520].copy_from_slice(b"EFI PART");
    foreign[1024 + 56..1024 + 58].copy_from_slice(&[0x53, 0xef]);
    let (_d, path) = file_with(&foreign);
    let store = FlagStore::open(&path).unwrap();
    assert!(!store.guard_passes().unwrap());
    assert!(matches!(
        store.write_guarded(&update(FlagState::Recovering, "p")),
        Err(StoreError::Foreign(_))
    ));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        foreign,
        "a refused write wrote"
    );
}

#[test]
fn a_guarded_write_accepts_zeros_records_and_a_torn_first_record() {
    let (_d, path) = file_with(&vec![0u8; MIN_PARTITION_LEN as usize]);
    let store = FlagStore::open(&path).unwrap();
    store
        .write_guarded(&update(FlagState::Recovering, "p1"))
        .unwrap();
    store
        .write_guarded(&update(FlagState::Failed, "p1"))
        .unwrap();
    assert_eq!(store.read().unwrap().state, FlagState::Failed);
    // The very first write torn at every 512-byte boundary past the magic: still a flag area.
    let record = FlagRecord {
        plan_id: "p".into(),
        state: FlagState::Recovering,
        ..FlagRecord::default()
    }
    .encode()
    .unwrap();
    for k in (512..SLOT_LEN).step_by(512) {
        let mut bytes = vec![0u8; MIN_PARTITION_LEN as usize];
        bytes[..k].copy_from_slice(&record[..k]);
        assert!(holds_only_flag_records(&bytes), "torn at {k}");
    }
}

#[test]
fn a_store_at_an_offset_reads_and_writes_only_its_slots() {
    let disk = vec![0x5au8; 64 << 10];
    let (_d, path) = file_with(&disk);
    let offset = 40 << 10;
    let zeros = vec![0u8; MIN_PARTITION_LEN as usize];
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .write_all_at(&zeros, offset)
        .unwrap();
    let store = FlagStore::open_at(&path, offset).unwrap();
    assert_eq!(store.offset(), offset);
    store
        .write_guarded(&update(FlagState::Recovering, "at"))
        .unwrap();
    let after = std::fs::read(&path).unwrap();
    let end = (offset + MIN_PARTITION_LEN) as usize;
    assert!(after[..offset as usize] == disk[..offset as usize]);
    assert!(after[end..] == disk[end..]);
    let view = SlotsView::decode(&after[offset as usize..end]);
    assert_eq!(view.record().plan_id, "at");
    // Too close to the end for two slots.
    assert!(matches!(
        FlagStore::open_at(&path, (64 << 10) - 4096),
        Err(StoreError::TooSmall(..))
    ));
}
