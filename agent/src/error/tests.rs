//! The code table, the code match and `docs/agent.md` agree; codes are unique.

use std::collections::BTreeSet;

use super::*;
use crate::image::BmapError;
use lazarus_proto::Sha256;
use rustix::io::Errno;

fn io() -> io::Error {
    io::Error::from_raw_os_error(Errno::IO.raw_os_error())
}

/// One error of every variant (nested variants included).
fn examples() -> Vec<AgentError> {
    let p = || PathBuf::from("/dev/vda");
    let s = || String::from("x");
    let node: lazarus_proto::NodeName = "node-3".parse().expect("node name");
    vec![
        PlanError::EmptyImage.into(),
        NetworkError::Netlink(Errno::ACCESS).into(),
        NetworkError::NoInterface {
            want: None,
            secs: 1,
        }
        .into(),
        NetworkError::LinkUp {
            iface: s(),
            source: Errno::NODEV,
        }
        .into(),
        NetworkError::NoCarrier {
            iface: s(),
            secs: 1,
        }
        .into(),
        NetworkError::Address {
            iface: s(),
            address: [10, 0, 0, 5].into(),
            prefix_len: 24,
            source: Errno::INVAL,
        }
        .into(),
        NetworkError::Route {
            gateway: [10, 0, 0, 1].into(),
            source: Errno::NETUNREACH,
        }
        .into(),
        SourceError::Mount {
            export: p(),
            target: p(),
            fstype: "nfs4",
            data: s(),
            source: Errno::TIMEDOUT,
        }
        .into(),
        AgentError::ImageOpen(p(), io()),
        AgentError::Bmap(p(), BmapCheckError::Parse(BmapError::Missing("BlockMap"))),
        SourceError::NotADirectory(p()).into(),
        SourceError::MountPoint(p(), io()).into(),
        AgentError::Bmap(
            p(),
            BmapCheckError::Digest {
                got: Sha256([0; 32]),
                want: Sha256([1; 32]),
            },
        ),
        AgentError::Bmap(p(), BmapCheckError::NotUtf8),
        AgentError::Bmap(p(), BmapCheckError::Size { map: 1, plan: 2 }),
        AgentError::Index(
            p(),
            IndexCheckError::Parse(lazarus_node::index::IndexError::Checksum),
        ),
        AgentError::Index(
            p(),
            IndexCheckError::Digest {
                got: Sha256([1; 32]),
                want: Sha256([2; 32]),
            },
        ),
        AgentError::Index(p(), IndexCheckError::Size { index: 1, plan: 2 }),
        SelectError::Empty.into(),
        SelectError::NoMatch(s()).into(),
        SelectError::Ambiguous {
            selector: s(),
            count: 2,
            names: s(),
        }
        .into(),
        SelectError::TooSmall {
            name: s(),
            size: 1,
            image: 2,
        }
        .into(),
        SelectError::NoPartition {
            disk: s(),
            number: 1,
        }
        .into(),
        SelectError::Sysfs(p(), s()).into(),
        SelectError::NeverTarget {
            name: s(),
            selector: s(),
            why: crate::disk::Exclusion::Usb,
        }
        .into(),
        AgentError::TargetOpen(p(), io()),
        AgentError::TargetBusy(p()),
        ImageError::TargetTooSmall {
            target: 1,
            image: 2,
        }
        .into(),
        ImageError::Read(io()).into(),
        ImageError::TooShort {
            got: 1,
            expected: 2,
        }
        .into(),
        ImageError::TooLong { expected: 1 }.into(),
        ImageError::DigestMismatch {
            expected: Sha256([0; 32]),
            got: Sha256([1; 32]),
        }
        .into(),
        ImageError::Write {
            offset: 0,
            source: io(),
        }
        .into(),
        ImageError::Sync(io()).into(),
        ImageError::Aborted.into(),
        ImageError::RangeMismatch { start: 0, end: 1 }.into(),
        ImageError::DataOutsideMap { offset: 0 }.into(),
        ImageError::ReadTarget {
            offset: 0,
            source: io::Error::other("x"),
        }
        .into(),
        ImageError::ChunkMismatch {
            chunk: 1,
            start: 2,
            end: 3,
        }
        .into(),
        ImageError::Checkpoint(io::Error::other("x")).into(),
        ImageError::SourceStalled {
            secs: 600,
            last: String::new(),
        }
        .into(),
        AgentError::Partitions(p(), PartitionError::Open(io())),
        AgentError::Partitions(
            p(),
            PartitionError::Gpt(crate::gpt::GptError::Invalid("CRC")),
        ),
        AgentError::Partitions(
            p(),
            PartitionError::Remove {
                number: 1,
                source: Errno::BUSY,
            },
        ),
        AgentError::Partitions(
            p(),
            PartitionError::Add {
                number: 1,
                source: Errno::BUSY,
            },
        ),
        AgentError::Partitions(
            p(),
            PartitionError::NotReady {
                numbers: vec![1],
                secs: 10,
            },
        ),
        AgentError::Partitions(
            p(),
            PartitionError::PastEnd {
                number: 1,
                start: 0,
                len: 1,
            },
        ),
        MountError::Mount {
            device: p(),
            target: p(),
            fstype: "ext4",
            source: Errno::INVAL,
        }
        .into(),
        BackupError::List(p(), io()).into(),
        BackupError::NoneBefore {
            node,
            before: s(),
            dir: p(),
        }
        .into(),
        BackupError::Manifest(p(), s()).into(),
        BackupError::Read(p(), io()).into(),
        BackupError::Write(p(), io()).into(),
        BackupError::Digest {
            path: p(),
            expected: Sha256([0; 32]),
            got: Sha256([1; 32]),
        }
        .into(),
        BackupError::Size {
            path: p(),
            expected: 1,
            got: 2,
        }
        .into(),
        BackupError::UnsafeEntry {
            entry: s(),
            reason: "absolute",
        }
        .into(),
        BackupError::Corrupt(s()).into(),
        BackupError::Restore {
            path: s(),
            source: io(),
        }
        .into(),
        BackupError::NothingToBackUp(s()).into(),
        BackupError::TooLarge {
            path: p(),
            size: 2,
            max: 1,
        }
        .into(),
        BackupError::NotAFile { path: p() }.into(),
        BackupError::HeaderTooLarge {
            kind: "PAX",
            size: 2,
            max: 1,
        }
        .into(),
        BackupError::UnsafeTarget {
            path: s(),
            reason: "symlink",
        }
        .into(),
        BackupError::Unrestorable(s()).into(),
        BackupError::BadKey.into(),
        MountError::MountPoint(p(), io()).into(),
        MountError::Unmount(p(), Errno::BUSY).into(),
        StoreError::Open(p(), io()).into(),
        FlagLookupError::NotFound {
            label: s(),
            disk: None,
        }
        .into(),
        FlagLookupError::Ambiguous {
            label: s(),
            count: 2,
        }
        .into(),
        FlagLookupError::NotInImage {
            on_disk: Box::new(FlagLookupError::NotFound {
                label: s(),
                disk: None,
            }),
        }
        .into(),
        FlagLookupError::NotBlockDevice(p()).into(),
        FlagLookupError::NotAPartition(p()).into(),
        FlagLookupError::OnAnotherDisk {
            flag: p(),
            disk: s(),
            chosen: s(),
        }
        .into(),
        StoreError::Foreign(p()).into(),
        AgentError::Sync(p(), io()),
        AgentError::Panicked(s()),
    ]
}

fn live_codes() -> BTreeSet<u32> {
    CODES
        .iter()
        .filter(|(_, variant, _)| *variant != "-")
        .map(|(code, _, _)| *code)
        .collect()
}

#[test]
fn codes_are_unique_and_in_order() {
    let codes: Vec<u32> = CODES.iter().map(|(c, _, _)| *c).collect();
    let mut sorted = codes.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(codes, sorted, "CODES must be unique and ascending");
    let variants: Vec<&str> = CODES
        .iter()
        .map(|(_, v, _)| *v)
        .filter(|v| *v != "-")
        .collect();
    let unique: BTreeSet<&str> = variants.iter().copied().collect();
    assert_eq!(unique.len(), variants.len(), "one code per variant");
}

#[test]
fn the_code_match_gives_exactly_the_live_codes_of_the_table() {
    let source = include_str!("../error.rs");
    let body = source
        .split("// codes:begin")
        .nth(1)
        .and_then(|s| s.split("// codes:end").next())
        .expect("the markers around the match in AgentError::code");
    let matched: Vec<u32> = body
        .split("=>")
        .skip(1)
        .filter_map(|arm| {
            let digits: String = arm
                .trim_start()
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .collect();
    let unique: BTreeSet<u32> = matched.iter().copied().collect();
    assert_eq!(
        unique.len(),
        matched.len(),
        "a code used twice in the match"
    );
    assert_eq!(unique, live_codes(), "the match and CODES differ");
}

#[test]
fn every_code_belongs_to_the_variant_the_table_names() {
    let examples = examples();
    let produced: Vec<u32> = examples.iter().map(AgentError::code).collect();
    let unique: BTreeSet<u32> = produced.iter().copied().collect();
    assert_eq!(unique.len(), produced.len(), "two examples give one code");
    assert_eq!(unique, live_codes(), "an example is missing for a code");
    for e in &examples {
        let (_, variant, _) = CODES
            .iter()
            .find(|(code, _, _)| *code == e.code())
            .expect("every code is in CODES");
        let debug = format!("{e:?}");
        let mut names = variant.split("::");
        let outer = names.next().unwrap_or_default();
        assert!(
            debug.starts_with(&format!("{outer}(")),
            "code {} is {variant}, but the error is {debug}",
            e.code()
        );
        if let Some(inner) = names.next() {
            assert!(
                debug.contains(inner),
                "code {} is {variant}, but the error is {debug}",
                e.code()
            );
        }
    }
}

#[test]
fn docs_agent_md_shows_the_code_table() {
    let doc = include_str!("../../../docs/agent.md");
    let table = doc
        .split("<!-- error-codes:begin -->\n")
        .nth(1)
        .and_then(|s| s.split("<!-- error-codes:end -->").next())
        .expect("docs/agent.md marks its code table with error-codes:begin/end");
    assert!(
        table == codes_markdown(),
        "docs/agent.md's code table is out of date; it should read:\n{}",
        codes_markdown()
    );
}
