//! Golden bytes pin the postcard encoding of every message (an accidental reorder breaks them),
//! and property tests show every message round-trips through a sealed frame.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use lazarus_proto::flag::FlagState;
use lazarus_proto::frame::{read_frame, CommandOpener, CommandSealer};
use lazarus_proto::*;
use proptest::prelude::*;

fn sample_plan() -> Plan {
    Plan {
        plan_id: "n3-1".into(),
        network: NetworkPlan {
            address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
            prefix_len: 24,
            gateway: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            interface: None,
        },
        nfs: NfsSource {
            server: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            export: "/export".into(),
            version: NfsVersion::V4_1,
            options: String::new(),
        },
        image: ImageSpec {
            path: "os.img".into(),
            format: ImageFormat::Zstd,
            size: 4096,
            sha256: Sha256([0x11; 32]),
            layout: ImageLayout::WholeDisk,
            bmap: None,
            index: None,
            mode: CopyMode::Auto,
        },
        target: DiskSelector {
            by_id: None,
            serial: Some("S1".into()),
            path: None,
            size: Some(1 << 30),
        },
        flag: FlagLocation::default(),
        restore: Some(RestoreSpec {
            backups_dir: "backups".into(),
            node: "n3".parse().unwrap(),
            failure_time: 1_764_000_000,
            filesystem: RestoreFilesystem {
                partition: Some(2),
                fstype: FsType::Ext4,
                root: "/".into(),
            },
            paths: vec!["srv".into()],
            backup_key: Some(BackupKey([0xb7; 32])),
        }),
        allow_weak_selector: false,
        restore_setid: true,
        unrestorable: Unrestorable::Fatal,
        max_backup_bytes: 1 << 30,
    }
}

fn sample_flag() -> FlagSummary {
    FlagSummary {
        state: FlagState::Recovered,
        seq: 4,
        plan_id: "n3-1".into(),
        error_code: 0,
        bytes_done: 4096,
        timestamp: 1_764_000_000,
    }
}

fn sample_status() -> Status {
    Status {
        boot_id: BootId([2; 16]),
        phase: Phase::Failed,
        step: Some(Step::CopyImage),
        bytes_done: 1024,
        bytes_total: 4096,
        flag: sample_flag(),
        plan_id: Some("n3-1".into()),
        error: Some(ErrorInfo {
            code: 21,
            message: "bad".into(),
        }),
        found_at_boot: None,
        unrestored: vec!["a (fifo)".into()],
        copy: Default::default(),
    }
}

fn golden_requests() -> Vec<(Request, &'static str)> {
    vec![
        (Request::Hello, "00"),
        (Request::GetStatus, "01"),
        (
            Request::Recover(Box::new(sample_plan())),
            "02046e332d31000a0000031801000a00000100000a000001072f6578706f72740200066f732e696d670180\
             20111111111111111111111111111111111111111111111111111111111111111100000002000102533100\
             018080808004000c6c617a617275732d666c616701076261636b757073026e33808292c906010200012f01\
             0373727601b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7000101808080\
             8004",
        ),
        (Request::Abort, "03"),
        (Request::Reboot, "04"),
        (Request::GetLogs { since: 300 }, "05ac02"),
        (Request::AckReady, "06"),
    ]
}

fn golden_responses() -> Vec<(Response, &'static str)> {
    vec![
        (
            Response::Hello(Hello {
                boot_id: BootId([1; 16]),
                next_counter: 5,
                agent_version: "0.1".into(),
                session: 300,
            }),
            "00010101010101010101010101010101010503302e31ac02",
        ),
        (
            Response::Status(sample_status()),
            "0102020202020202020202020202020202040103800880200204046e332d31008020808292c906\
             01046e332d310115036261640001086120286669666f2900000000",
        ),
        (
            Response::Logs(Logs {
                lines: vec![LogLine {
                    seq: 1,
                    time_ms: 2,
                    level: 3,
                    message: "hi".into(),
                }],
                next: 2,
            }),
            "020101020302686902",
        ),
        (
            Response::Ready(Ready {
                boot_id: BootId([3; 16]),
                identity: Identity {
                    macs: vec![MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])],
                    system_uuid: Some("u".into()),
                    serial: None,
                    address: Some(IpAddr::V6(Ipv6Addr::LOCALHOST)),
                },
                flag: Some(sample_flag()),
                agent_version: "0.1".into(),
            }),
            "0303030303030303030303030303030303015254001234560101750001010000000000000000000000\
             0000000001010204046e332d31008020808292c90603302e31",
        ),
        (
            Response::Error(ErrorReply {
                kind: Refusal::Busy,
                message: "x".into(),
            }),
            "04010178",
        ),
    ]
}

fn check_golden<T: serde::Serialize>(cases: Vec<(T, &'static str)>) {
    let mut wrong = Vec::new();
    for (i, (msg, want)) in cases.iter().enumerate() {
        let got = hex::encode(&postcard::to_allocvec(msg).unwrap());
        let want: String = want.split_whitespace().collect();
        if got != want {
            wrong.push(format!("case {i}: got {got}"));
        }
    }
    assert!(wrong.is_empty(), "encodings changed:\n{}", wrong.join("\n"));
}

#[test]
fn golden_bytes_of_every_request() {
    check_golden(golden_requests());
}

#[test]
fn golden_bytes_of_every_response() {
    check_golden(golden_responses());
}

#[test]
fn plan_reads_from_toml_with_hex_digest() {
    let plan = sample_plan();
    let text = toml::to_string(&plan).unwrap();
    assert!(text.contains(&"11".repeat(32)), "{text}");
    assert_eq!(toml::from_str::<Plan>(&text).unwrap(), plan);
    let bad = text.replace(&"11".repeat(32), "xyz");
    let err = toml::from_str::<Plan>(&bad).unwrap_err().to_string();
    assert!(err.contains("expected 64 hex characters"), "{err}");
}

#[test]
fn allow_weak_selector_is_the_last_field_and_false_when_a_plan_file_omits_it() {
    let plan = sample_plan();
    let text = toml::to_string(&plan).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.starts_with("allow_weak_selector"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(text, without, "the field is written: {text}");
    assert!(
        !toml::from_str::<Plan>(&without)
            .unwrap()
            .allow_weak_selector
    );
    let weak = Plan {
        allow_weak_selector: true,
        ..plan.clone()
    };
    // The flag's byte sits just before the restore fields (3 bytes for the sample's values:
    // true, fatal, and 1 GiB as a 5-byte varint).
    let old = postcard::to_allocvec(&plan).unwrap();
    let new = postcard::to_allocvec(&weak).unwrap();
    let at = old.len() - 8;
    assert_eq!(new[..at], old[..at]);
    assert_eq!(new[at + 1..], old[at + 1..]);
    assert_eq!((old[at], new[at]), (0, 1));
    let example = include_str!("../../docs/plan.example.toml");
    assert!(!toml::from_str::<Plan>(example).unwrap().allow_weak_selector);
}

#[test]
fn the_restore_fields_are_last_and_safe_when_a_plan_file_omits_them() {
    let plan = sample_plan();
    let text = toml::to_string(&plan).unwrap();
    for key in ["restore_setid", "unrestorable", "max_backup_bytes"] {
        assert!(text.lines().any(|l| l.starts_with(key)), "{key}: {text}");
    }
    let without: String = text
        .lines()
        .filter(|l| {
            !["restore_setid", "unrestorable", "max_backup_bytes"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let read = toml::from_str::<Plan>(&without).unwrap();
    assert_eq!(
        (read.restore_setid, read.unrestorable, read.max_backup_bytes),
        (false, Unrestorable::Warn, DEFAULT_MAX_BACKUP_BYTES)
    );
    let example = toml::from_str::<Plan>(include_str!("../../docs/plan.example.toml")).unwrap();
    assert_eq!(
        (
            example.restore_setid,
            example.unrestorable,
            example.max_backup_bytes
        ),
        (false, Unrestorable::Warn, DEFAULT_MAX_BACKUP_BYTES)
    );
    // Trailing: a plan with the defaults encodes as the plan before them plus these bytes.
    let defaults = Plan {
        restore_setid: false,
        unrestorable: Unrestorable::Warn,
        max_backup_bytes: DEFAULT_MAX_BACKUP_BYTES,
        ..plan
    };
    let bytes = postcard::to_allocvec(&defaults).unwrap();
    assert_eq!(hex::encode(&bytes[bytes.len() - 7..]), "00008080808001");
    // And a status's list of unrestored entries is its last field.
    let status = Status {
        unrestored: Vec::new(),
        copy: Default::default(),
        ..sample_status()
    };
    assert_eq!(postcard::to_allocvec(&status).unwrap().last(), Some(&0));
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn flag_summary() -> impl Strategy<Value = FlagSummary> {
    (
        0u8..4,
        any::<u64>(),
        "[!-~]{0,64}",
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(s, seq, plan_id, error_code, bytes_done, timestamp)| FlagSummary {
                state: FlagState::from_code(s).unwrap(),
                seq,
                plan_id,
                error_code,
                bytes_done,
                timestamp,
            },
        )
}

fn plan() -> impl Strategy<Value = Plan> {
    let network = (
        ip(),
        any::<u8>(),
        proptest::option::of(ip()),
        proptest::option::of(".*"),
    )
        .prop_map(|(address, prefix_len, gateway, interface)| NetworkPlan {
            address,
            prefix_len,
            gateway,
            interface,
        });
    let nfs = (ip(), ".*", 0u8..4, ".*").prop_map(|(server, export, v, options)| NfsSource {
        server,
        export,
        version: [
            NfsVersion::V3,
            NfsVersion::V4,
            NfsVersion::V4_1,
            NfsVersion::V4_2,
        ][usize::from(v)],
        options,
    });
    let image = (
        ".*",
        any::<bool>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        proptest::option::of(any::<u32>()),
        proptest::option::of((".*", any::<[u8; 32]>())),
    )
        .prop_map(|(path, zstd, size, d, part, bmap)| ImageSpec {
            path,
            format: if zstd {
                ImageFormat::Zstd
            } else {
                ImageFormat::Raw
            },
            size,
            sha256: Sha256(d),
            layout: part.map_or(ImageLayout::WholeDisk, |number| ImageLayout::Partition {
                number,
            }),
            bmap: bmap.map(|(path, d)| BmapRef {
                path,
                sha256: Sha256(d),
            }),
            index: None,
            mode: CopyMode::Differential,
        });
    let target = (
        proptest::option::of(".*"),
        proptest::option::of(".*"),
        proptest::option::of(".*"),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(by_id, serial, path, size)| DiskSelector {
            by_id,
            serial,
            path,
            size,
        });
    let restore = proptest::option::of(
        (
            ".*",
            "[a-zA-Z0-9_-][a-zA-Z0-9._-]{0,40}",
            any::<u64>(),
            proptest::option::of(any::<u32>()),
            any::<bool>(),
            ".*",
            proptest::collection::vec(".*", 0..4),
            proptest::option::of(any::<[u8; 32]>()),
        )
            .prop_map(
                |(backups_dir, node, failure_time, partition, xfs, root, paths, key)| RestoreSpec {
                    backups_dir,
                    node: node.parse().unwrap(),
                    failure_time,
                    filesystem: RestoreFilesystem {
                        partition,
                        fstype: if xfs { FsType::Xfs } else { FsType::Ext4 },
                        root,
                    },
                    paths,
                    backup_key: key.map(BackupKey),
                },
            ),
    );
    (
        "[!-~]{0,64}",
        network,
        nfs,
        image,
        target,
        (
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<u64>(),
        ),
        ".*",
        restore,
    )
        .prop_map(
            |(
                plan_id,
                network,
                nfs,
                image,
                target,
                (by_path, weak, setid, fatal, max_backup_bytes),
                flag,
                restore,
            )| Plan {
                plan_id,
                network,
                nfs,
                image,
                target,
                flag: if by_path {
                    FlagLocation::Path(flag)
                } else {
                    FlagLocation::PartLabel(flag)
                },
                restore,
                allow_weak_selector: weak,
                restore_setid: setid,
                unrestorable: if fatal {
                    Unrestorable::Fatal
                } else {
                    Unrestorable::Warn
                },
                max_backup_bytes,
            },
        )
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        Just(Request::Hello),
        Just(Request::GetStatus),
        plan().prop_map(|p| Request::Recover(Box::new(p))),
        Just(Request::Abort),
        Just(Request::Reboot),
        any::<u64>().prop_map(|since| Request::GetLogs { since }),
        Just(Request::AckReady),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    let phases = [
        Phase::Booting,
        Phase::Ready,
        Phase::Recovering,
        Phase::Recovered,
        Phase::Failed,
        Phase::Rebooting,
    ];
    let steps = [
        Step::ConfigureNetwork,
        Step::MountSource,
        Step::SelectDisk,
        Step::CopyImage,
        Step::RereadPartitions,
        Step::MountTarget,
        Step::RestoreFiles,
        Step::Sync,
    ];
    let status = (
        any::<[u8; 16]>(),
        0usize..6,
        proptest::option::of(0usize..8),
        any::<u64>(),
        any::<u64>(),
        flag_summary(),
        proptest::option::of(".*"),
        (
            proptest::option::of((any::<u32>(), ".*")),
            proptest::option::of(flag_summary()),
            proptest::collection::vec(".*", 0..3),
        ),
    )
        .prop_map(
            move |(
                b,
                p,
                s,
                bytes_done,
                bytes_total,
                flag,
                plan_id,
                (error, found_at_boot, unrestored),
            )| {
                Status {
                    boot_id: BootId(b),
                    phase: phases[p],
                    step: s.map(|s| steps[s]),
                    bytes_done,
                    bytes_total,
                    flag,
                    plan_id,
                    error: error.map(|(code, message)| ErrorInfo { code, message }),
                    found_at_boot,
                    unrestored,
                    copy: CopyCounters {
                        checked: bytes_done / 3,
                        fetched: bytes_total / 5,
                        written: bytes_done / 7,
                        source_stalled_since: (bytes_done % 2 == 0).then_some(bytes_total),
                    },
                }
            },
        );
    let refusals = [
        Refusal::BadRequest,
        Refusal::Busy,
        Refusal::WrongPhase,
        Refusal::Internal,
    ];
    prop_oneof![
        (any::<[u8; 16]>(), any::<u64>(), ".*", any::<u64>()).prop_map(
            |(b, next_counter, agent_version, session)| {
                Response::Hello(Hello {
                    boot_id: BootId(b),
                    next_counter,
                    agent_version,
                    session,
                })
            }
        ),
        status.prop_map(Response::Status),
        (
            proptest::collection::vec((any::<u64>(), any::<u64>(), 1u8..6, ".*"), 0..8),
            any::<u64>()
        )
            .prop_map(|(lines, next)| Response::Logs(Logs {
                lines: lines
                    .into_iter()
                    .map(|(seq, time_ms, level, message)| LogLine {
                        seq,
                        time_ms,
                        level,
                        message
                    })
                    .collect(),
                next,
            })),
        (
            any::<[u8; 16]>(),
            proptest::collection::vec(any::<[u8; 6]>(), 0..4),
            proptest::option::of(".*"),
            proptest::option::of(".*"),
            proptest::option::of(ip()),
            proptest::option::of(flag_summary()),
            ".*"
        )
            .prop_map(
                |(b, macs, system_uuid, serial, address, flag, agent_version)| {
                    Response::Ready(Ready {
                        boot_id: BootId(b),
                        identity: Identity {
                            macs: macs.into_iter().map(MacAddr).collect(),
                            system_uuid,
                            serial,
                            address,
                        },
                        flag,
                        agent_version,
                    })
                }
            ),
        (0usize..4, ".*").prop_map(move |(k, message)| Response::Error(ErrorReply {
            kind: refusals[k],
            message
        })),
    ]
}

proptest! {
    #[test]
    fn every_request_and_response_round_trips_through_sealed_frames(
        req in request(), resp in response(), counter in 1u64..u64::MAX
    ) {
        let key = AgentKey::from_bytes([9; 32]);
        let signer = SigningKey::from_seed([8; 32]);
        let mut agent = CommandOpener::new(signer.public(), BootId([4; 16]));
        let mut hello = agent.begin(counter ^ 0x5a5a);
        hello.next_counter = counter;
        let mut client = CommandSealer::new(signer, &hello);
        let (bytes, wait) = client.seal(&req).unwrap();
        let (got, reply_to) = agent.open(&read_frame(&mut &bytes[..]).unwrap()).unwrap();
        prop_assert_eq!(got, req);
        let reply = reply_to.seal_reply(&key, &resp).unwrap();
        let opened = wait.open_reply(&key, &read_frame(&mut &reply[..]).unwrap()).unwrap();
        prop_assert_eq!(opened, resp);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut agent = CommandOpener::new(SigningKey::from_seed([9; 32]).public(), BootId([4; 16]));
        agent.begin(1);
        if let Ok(frame) = read_frame(&mut &bytes[..]) {
            prop_assert!(agent.open(&frame).is_err());
            let _ = frame.peek_announce();
        }
    }
}
