//! A recovery's order against the fake machine: the write-ahead flag, what RECOVERED waits for,
//! and the code each failing step leaves in the flag.

use std::fs;

use super::*;
use crate::platform::fake::{Call, DiskState, Failure, Fake, What};
use lazarus_proto::FlagLocation;

const MIB: usize = 1 << 20;
/// When the fake's backup was taken; the plan's failure time is later.
const BACKUP_TIME: u64 = 1_700_000_000;

fn fake() -> Fake {
    Fake::new(
        lazarus_testkit::noise(3 * MIB + 123, 5),
        4 * MIB,
        "node-3",
        BACKUP_TIME,
    )
}

fn plan_for(fake: &Fake) -> Plan {
    fake.plan(BACKUP_TIME + 3600)
}

fn run(fake: &Fake, plan: &Plan) -> Result<FlagRecord, AgentError> {
    recover(fake, plan, &Progress::default(), fake)
}

fn position(fake: &Fake, what: &What) -> usize {
    fake.events()
        .iter()
        .position(|e| &e.what == what)
        .unwrap_or_else(|| panic!("{what:?} never happened: {:#?}", fake.trace()))
}

#[test]
fn a_whole_disk_recovery_asks_the_machine_in_order() {
    let fake = fake();
    run(&fake, &plan_for(&fake)).expect("recovers");
    use Call::*;
    use What::{Call as C, Flag as F, Step as S};
    assert_eq!(
        fake.trace(),
        vec![
            S(Step::ConfigureNetwork),
            C(ConfigureNetwork),
            S(Step::MountSource),
            C(MountSource),
            S(Step::SelectDisk),
            C(Disks),
            C(FlagDevice),
            F(FlagState::Recovering),
            S(Step::CopyImage),
            S(Step::RereadPartitions),
            C(RereadPartitions),
            C(FlagDevice),
            F(FlagState::Recovering),
            S(Step::MountTarget),
            C(Partition),
            C(MountTarget),
            S(Step::RestoreFiles),
            C(SyncFiles),
            C(UnmountTarget),
            S(Step::Sync),
            C(SyncDisk),
            F(FlagState::Recovered),
            C(UnmountSource),
        ]
    );
}

#[test]
fn recovering_is_durable_before_the_first_disk_write() {
    let fake = fake();
    run(&fake, &plan_for(&fake)).expect("recovers");
    let events = fake.events();
    let recovering = position(&fake, &What::Flag(FlagState::Recovering));
    let copy = position(&fake, &What::Step(Step::CopyImage));
    let first_change = events
        .iter()
        .position(|e| e.disk != DiskState::Untouched)
        .expect("the disk was written");
    assert!(recovering < copy && copy < first_change, "{events:#?}");
    // Read back from the flag file, not taken from memory: durable, not merely decided.
    assert_eq!(events[recovering].flag, FlagState::Recovering);
    assert_eq!(events[copy].flag, FlagState::Recovering);
    assert!(events[..=copy]
        .iter()
        .all(|e| e.disk == DiskState::Untouched));
    assert_eq!(fake.disk_state(), DiskState::Image);
}

#[test]
fn recovered_is_written_only_after_the_image_and_the_restored_files_are_synced() {
    let fake = fake();
    let record = run(&fake, &plan_for(&fake)).expect("recovers");
    assert_eq!(record.state, FlagState::Recovered);
    assert_eq!(fake.flag_record().state, FlagState::Recovered);
    let events = fake.events();
    let sync_files = position(&fake, &What::Call(Call::SyncFiles));
    let unmount = position(&fake, &What::Call(Call::UnmountTarget));
    let sync_disk = position(&fake, &What::Call(Call::SyncDisk));
    let recovered = position(&fake, &What::Flag(FlagState::Recovered));
    assert!(
        sync_files < unmount && unmount < sync_disk && sync_disk < recovered,
        "{events:#?}"
    );
    assert!(
        events[sync_files].files_restored,
        "files synced before they were restored"
    );
    assert_eq!(events[sync_disk].disk, DiskState::Image);
    assert!(
        events[..recovered]
            .iter()
            .all(|e| e.flag != FlagState::Recovered),
        "RECOVERED on disk before the final sync: {events:#?}"
    );
}

/// One failing step: how to make it fail, the code it must leave, and the disk afterwards.
struct Case {
    name: &'static str,
    setup: fn(&mut Fake, &mut Plan),
    code: u32,
    disk: DiskState,
}

fn fail(fake: &mut Fake, call: Call, nth: usize) {
    fake.fail = Some((call, nth, Failure::Error));
}

/// A flag at a fixed path is opened before anything else, so even the first step's failure is
/// recorded in it.
fn flag_by_path(fake: &mut Fake, plan: &mut Plan) {
    plan.flag = FlagLocation::Path(fake.flag.display().to_string());
}

const CASES: &[Case] = &[
    Case {
        name: "network",
        setup: |f, p| {
            flag_by_path(f, p);
            fail(f, Call::ConfigureNetwork, 1)
        },
        code: 203,
        disk: DiskState::Untouched,
    },
    Case {
        name: "mount source",
        setup: |f, p| {
            flag_by_path(f, p);
            fail(f, Call::MountSource, 1)
        },
        code: 300,
        disk: DiskState::Untouched,
    },
    Case {
        name: "image open",
        setup: |f, p| {
            flag_by_path(f, p);
            std::fs::remove_file(f.export.join("images/system.img")).unwrap();
        },
        code: 301,
        disk: DiskState::Untouched,
    },
    Case {
        name: "disk listing",
        setup: |f, p| {
            flag_by_path(f, p);
            fail(f, Call::Disks, 1)
        },
        code: 405,
        disk: DiskState::Untouched,
    },
    Case {
        name: "disk selection",
        setup: |f, p| {
            flag_by_path(f, p);
            p.target.serial = Some("ANOTHER".into());
        },
        code: 401,
        disk: DiskState::Untouched,
    },
    Case {
        name: "target too small",
        setup: |f, p| {
            flag_by_path(f, p);
            p.image.size = f.disk.size + 1;
        },
        code: 403,
        disk: DiskState::Untouched,
    },
    Case {
        name: "copy (wrong digest)",
        setup: |_, p| p.image.sha256.0[0] ^= 0xff,
        code: 504,
        disk: DiskState::Other,
    },
    Case {
        name: "re-read partitions",
        setup: |f, _| fail(f, Call::RereadPartitions, 1),
        code: 604,
        disk: DiskState::Image,
    },
    Case {
        name: "flag on the new partition table",
        setup: |f, _| fail(f, Call::FlagDevice, 2),
        code: 801,
        disk: DiskState::Image,
    },
    Case {
        name: "restore partition",
        setup: |f, _| fail(f, Call::Partition, 1),
        code: 404,
        disk: DiskState::Image,
    },
    Case {
        name: "mount target",
        setup: |f, _| fail(f, Call::MountTarget, 1),
        code: 700,
        disk: DiskState::Image,
    },
    Case {
        name: "restore (no backup before the failure)",
        setup: |_, p| p.restore.as_mut().unwrap().failure_time = BACKUP_TIME,
        code: 703,
        disk: DiskState::Image,
    },
    Case {
        name: "sync restored files",
        setup: |f, _| fail(f, Call::SyncFiles, 1),
        code: 900,
        disk: DiskState::Image,
    },
    Case {
        name: "unmount target",
        setup: |f, _| fail(f, Call::UnmountTarget, 1),
        code: 714,
        disk: DiskState::Image,
    },
    Case {
        name: "sync disk",
        setup: |f, _| fail(f, Call::SyncDisk, 1),
        code: 900,
        disk: DiskState::Image,
    },
    Case {
        name: "a step panics",
        setup: |f, _| f.fail = Some((Call::MountTarget, 1, Failure::Panic)),
        code: 999,
        disk: DiskState::Image,
    },
];

#[test]
fn each_failing_step_writes_failed_with_its_own_code() {
    for case in CASES {
        let mut fake = fake();
        let mut plan = plan_for(&fake);
        (case.setup)(&mut fake, &mut plan);
        let err = run(&fake, &plan).expect_err(case.name);
        assert_eq!(err.code(), case.code, "{}: {err}", case.name);
        let flag = fake.flag_record();
        assert_eq!(
            (flag.state, flag.error_code, flag.plan_id.as_str()),
            (FlagState::Failed, case.code, "fake-1"),
            "{}",
            case.name
        );
        assert_eq!(flag.message, err.to_string(), "{}", case.name);
        assert_eq!(fake.disk_state(), case.disk, "{}", case.name);
        let events = fake.events();
        assert!(
            events.iter().all(|e| e.flag != FlagState::Recovered),
            "{}: RECOVERED appeared",
            case.name
        );
        assert!(
            events
                .iter()
                .all(|e| e.disk == DiskState::Untouched || e.flag != FlagState::None),
            "{}: the disk changed with no flag written",
            case.name
        );
        // What was mounted is unmounted, whichever step failed.
        let trace = fake.trace();
        let count = |c: Call| trace.iter().filter(|w| **w == What::Call(c)).count();
        let source_mounted = case.code != 300 && count(Call::MountSource) == 1;
        assert_eq!(
            count(Call::UnmountSource),
            usize::from(source_mounted),
            "{}",
            case.name
        );
        let target_mounted = count(Call::MountTarget) == 1 && ![700, 999].contains(&case.code);
        assert_eq!(
            count(Call::UnmountTarget),
            usize::from(target_mounted),
            "{}",
            case.name
        );
    }
}

#[test]
fn a_failed_copy_leaves_the_disk_header_zeroed() {
    let fake = fake();
    let mut plan = plan_for(&fake);
    plan.image.sha256.0[0] ^= 0xff;
    assert_eq!(run(&fake, &plan).expect_err("bad digest").code(), 504);
    let disk = std::fs::read(&fake.disk.dev_path).unwrap();
    assert!(disk[..crate::image::HEADER_LEN as usize]
        .iter()
        .all(|&b| b == 0));
}

#[test]
fn an_early_failure_with_a_flag_label_leaves_flag_and_disk_alone() {
    let mut fake = fake();
    fail(&mut fake, Call::ConfigureNetwork, 1);
    let err = run(&fake, &plan_for(&fake)).expect_err("network fails");
    assert_eq!(err.code(), 203);
    // The flag partition is looked up only on the chosen disk: nothing was written anywhere.
    assert_eq!(fake.flag_record().state, FlagState::None);
    assert_eq!(fake.disk_state(), DiskState::Untouched);
    assert!(fake.trace().iter().all(|w| !matches!(w, What::Flag(_))));
}

#[test]
fn a_wrecked_disk_whose_image_has_no_flag_partition_is_not_touched() {
    let mut fake = fake();
    fake.no_flag_on_disk = true;
    let err = run(&fake, &plan_for(&fake)).expect_err("no flag anywhere");
    assert_eq!(err.code(), 803, "{err}");
    assert_eq!(fake.flag_record().state, FlagState::None);
    assert_eq!(fake.disk_state(), DiskState::Untouched);
    assert!(!fake.trace().contains(&What::Call(Call::RegisterPartition)));
    assert!(!fake.trace().contains(&What::Step(Step::CopyImage)));
}

#[test]
fn a_size_or_path_only_selector_is_refused_unless_the_plan_allows_it() {
    let fake = fake();
    let mut plan = plan_for(&fake);
    plan.target = lazarus_proto::DiskSelector {
        size: Some(fake.disk.size),
        path: Some(fake.disk.dev_path.display().to_string()),
        ..Default::default()
    };
    let err = run(&fake, &plan).expect_err("a weak selector");
    assert_eq!(err.code(), 100, "{err}");
    assert!(err.to_string().contains("allow_weak_selector"), "{err}");
    assert!(
        fake.trace().is_empty(),
        "something happened: {:?}",
        fake.trace()
    );
    assert_eq!(fake.disk_state(), DiskState::Untouched);
    plan.allow_weak_selector = true;
    run(&fake, &plan).expect("allowed");
    assert_eq!(fake.disk_state(), DiskState::Image);
}

#[test]
fn a_flag_path_holding_foreign_data_is_never_written() {
    let fake = fake();
    let mut plan = plan_for(&fake);
    // A typo'd flag path: a device whose first 8 KiB hold a partition table.
    let mut foreign = vec![0u8; 64 << 10];
    foreign[512..520].copy_from_slice(b"EFI PART");
    std::fs::write(&fake.flag, &foreign).unwrap();
    plan.flag = FlagLocation::Path(fake.flag.display().to_string());
    let err = run(&fake, &plan).expect_err("a foreign flag device");
    assert_eq!(err.code(), 807, "{err}");
    assert!(
        std::fs::read(&fake.flag).unwrap() == foreign,
        "the guard let a write through"
    );
    assert_eq!(fake.disk_state(), DiskState::Untouched);
    assert!(!fake.trace().contains(&What::Call(Call::ConfigureNetwork)));
}

#[test]
fn unrestored_entries_are_listed_in_the_flag_or_fail_the_plan_as_it_says() {
    use std::os::unix::fs::PermissionsExt;
    // Warn (the default): RECOVERED, the fifo named in the flag's message and to the observer,
    // the setuid bit dropped.
    let fake = fake();
    fake.add_backup_with_specials(BACKUP_TIME + 60);
    let record = run(&fake, &plan_for(&fake)).expect("recovers");
    assert_eq!(record.state, FlagState::Recovered);
    assert_eq!(record.message, "1 entry not restored: etc/pipe (fifo)");
    assert!(fake
        .trace()
        .contains(&What::Unrestored(vec!["etc/pipe (fifo)".into()])));
    let etc = fake.restored.join("etc");
    assert_eq!(fs::read(etc.join("business.conf")).unwrap(), b"orders=43\n");
    assert!(!etc.join("pipe").exists());
    let mode = |p: &str| fs::metadata(etc.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);

    // The plan allows setid bits: kept.
    let fake = self::fake();
    fake.add_backup_with_specials(BACKUP_TIME + 60);
    let mut plan = plan_for(&fake);
    plan.restore_setid = true;
    run(&fake, &plan).expect("recovers");
    let etc = fake.restored.join("etc");
    assert_eq!(mode_of(&etc.join("suid")), 0o4755);

    // Fatal: FAILED with its own code, and nothing restored.
    let fake = self::fake();
    fake.add_backup_with_specials(BACKUP_TIME + 60);
    let mut plan = plan_for(&fake);
    plan.unrestorable = lazarus_proto::Unrestorable::Fatal;
    let err = run(&fake, &plan).unwrap_err();
    assert_eq!(err.code(), 719, "{err}");
    assert!(err.to_string().contains("etc/pipe (fifo)"), "{err}");
    position(&fake, &What::Flag(FlagState::Failed));
    assert!(!fake.restored.join("etc").exists());
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_backup_over_the_plans_size_cap_fails_the_plan_unread() {
    let fake = fake();
    let mut plan = plan_for(&fake);
    plan.max_backup_bytes = 16;
    let err = run(&fake, &plan).unwrap_err();
    assert_eq!(err.code(), 715, "{err}");
    assert!(err.to_string().contains("max_backup_bytes"), "{err}");
    assert!(!fake.restored.join("etc").exists());
}

/// Adds a chunk index of the fake's image to its export and to `plan`.
fn with_index(fake: &Fake, plan: &mut Plan) {
    let image = fake.export.join("images/system.img");
    let idx = lazarus_node::index::build(&image, 1 << 20, 2)
        .unwrap()
        .encode();
    fs::write(fake.export.join("images/system.idx"), &idx).unwrap();
    plan.image.index = Some(lazarus_proto::IndexRef {
        path: "images/system.idx".into(),
        sha256: lazarus_node::index::sha256(&idx),
    });
}

#[test]
fn with_an_index_a_second_recovery_checks_the_disk_and_rewrites_only_what_differs() {
    use std::os::unix::fs::FileExt;
    let fake = fake();
    let mut plan = plan_for(&fake);
    with_index(&fake, &mut plan);
    let first = Progress::default();
    recover(&fake, &plan, &first, &fake).expect("recovers");
    assert_eq!(fake.disk_state(), DiskState::Image);
    let c = first.counters();
    assert_eq!(
        c.checked, 0,
        "a disk whose flag named no image went full: {c:?}"
    );
    assert_eq!(c.fetched, plan.image.size);

    // The same image again: the flag names it, so auto checks every chunk and writes nothing.
    plan.plan_id = "fake-2".into();
    let again = Progress::default();
    recover(&fake, &plan, &again, &fake).expect("recovers again");
    let c = again.counters();
    assert_eq!((c.checked, c.fetched, c.written), (plan.image.size, 0, 0));

    // One damaged byte in chunk 2: that chunk is fetched, and it and the header are written.
    let disk = fs::OpenOptions::new()
        .write(true)
        .open(&fake.disk.dev_path)
        .unwrap();
    disk.write_all_at(&[0xee], (2 << 20) + 5).unwrap();
    plan.plan_id = "fake-3".into();
    let fix = Progress::default();
    recover(&fake, &plan, &fix, &fake).expect("recovers the damage");
    assert_eq!(fake.disk_state(), DiskState::Image);
    let c = fix.counters();
    assert_eq!(c.fetched, 1 << 20, "{c:?}");
    assert_eq!(c.written, 2 << 20, "the chunk and the header: {c:?}");
    assert_eq!(fake.flag_record().state, FlagState::Recovered);
}

#[test]
fn an_index_that_is_not_the_plans_fails_with_its_code_before_the_disk_changes() {
    let fake = fake();
    let mut plan = plan_for(&fake);
    with_index(&fake, &mut plan);
    if let Some(i) = plan.image.index.as_mut() {
        i.sha256.0[0] ^= 1;
    }
    let err = run(&fake, &plan).unwrap_err();
    assert_eq!(err.code(), 309, "{err}");
    assert_eq!(fake.disk_state(), DiskState::Untouched);
    plan.image.index = None;
    plan.image.mode = lazarus_proto::CopyMode::Differential;
    assert!(matches!(
        validate(&plan),
        Err(PlanError::DifferentialWithoutIndex)
    ));
}

#[test]
fn a_packed_zstd_image_is_fetched_frame_by_frame_where_the_disk_differs() {
    use std::os::unix::fs::FileExt;
    let fake = fake();
    let mut plan = plan_for(&fake);
    let mut packed = Vec::new();
    let idx = lazarus_node::index::pack(
        &fake.export.join("images/system.img"),
        &mut packed,
        1 << 20,
        2,
    )
    .unwrap();
    fs::write(fake.export.join("images/system.img.zst"), &packed).unwrap();
    let bytes = idx.encode();
    fs::write(fake.export.join("images/system.idx"), &bytes).unwrap();
    plan.image.path = "images/system.img.zst".into();
    plan.image.format = lazarus_proto::ImageFormat::Zstd;
    plan.image.index = Some(lazarus_proto::IndexRef {
        path: "images/system.idx".into(),
        sha256: lazarus_node::index::sha256(&bytes),
    });
    // First a full copy (the packed image is an ordinary zstd stream too).
    recover(&fake, &plan, &Progress::default(), &fake).expect("recovers");
    assert_eq!(fake.disk_state(), DiskState::Image);
    // Chunk 2 damaged: only its frame is fetched.
    fs::OpenOptions::new()
        .write(true)
        .open(&fake.disk.dev_path)
        .unwrap()
        .write_all_at(&[0xee], (2 << 20) + 5)
        .unwrap();
    plan.plan_id = "fake-2".into();
    let p = Progress::default();
    recover(&fake, &plan, &p, &fake).expect("recovers the damage");
    assert_eq!(fake.disk_state(), DiskState::Image);
    let c = p.counters();
    assert_eq!(c.fetched, idx.frame(2).unwrap().1 as u64, "{c:?}");
    assert_eq!(c.written, 2 << 20, "{c:?}");
}
