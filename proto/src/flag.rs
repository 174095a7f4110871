//! The flag record: the on-disk codec, pure (no I/O), so the restored OS can read a flag
//! partition with nothing but this crate.
//!
//! A flag partition holds two slots of [`SLOT_LEN`] bytes at offsets 0 and [`SLOT_LEN`]. A slot is
//! valid when its magic, format version, field ranges and CRC-32 (over the whole slot but the last
//! four bytes) check out. The current record is the valid slot with the newer sequence number;
//! with no valid slot the state is [`FlagState::None`]. Writers put the next record in the other
//! slot than the current one (see the agent's store), so a torn write leaves the old record.
//!
//! Slot layout (little endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `LZRSFLAG` |
//! | 8 | 2 | format version (1) |
//! | 10 | 1 | state: 0 none, 1 recovering, 2 recovered, 3 failed |
//! | 11 | 1 | plan id length (≤ 64) |
//! | 12 | 4 | error code |
//! | 16 | 8 | sequence number |
//! | 24 | 8 | timestamp, unix seconds |
//! | 32 | 8 | bytes done |
//! | 40 | 8 | bytes total |
//! | 48 | 32 | image SHA-256 |
//! | 80 | 64 | plan id, zero padded |
//! | 144 | 2 | message length (≤ 1024) |
//! | 146 | 1024 | message, UTF-8, zero padded |
//! | 1170 | 2922 | zero |
//! | 4092 | 4 | CRC-32 (IEEE) of bytes 0..4092 |

use serde::{Deserialize, Serialize};

use crate::types::Sha256;

/// A flag record as reported over the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagSummary {
    pub state: FlagState,
    pub seq: u64,
    pub plan_id: String,
    pub error_code: u32,
    pub bytes_done: u64,
    pub timestamp: u64,
}

/// Size of one slot; a multiple of every logical block size in use (512, 4096).
pub const SLOT_LEN: usize = 4096;
/// Number of slots.
pub const SLOTS: usize = 2;
/// The smallest flag partition or file.
pub const MIN_PARTITION_LEN: u64 = (SLOT_LEN * SLOTS) as u64;
/// The GPT partition label that marks a flag partition.
pub const DEFAULT_PARTLABEL: &str = "lazarus-flag";
/// Longest plan id a record holds.
pub const MAX_PLAN_ID_LEN: usize = 64;
/// Longest message a record holds.
pub const MAX_MESSAGE_LEN: usize = 1024;

const MAGIC: &[u8; 8] = b"LZRSFLAG";
const FORMAT_VERSION: u16 = 1;
const PLAN_ID_AT: usize = 80;
const MESSAGE_LEN_AT: usize = 144;
const MESSAGE_AT: usize = 146;
const CRC_AT: usize = SLOT_LEN - 4;

/// The recovery status code. The numbers are on disk: never change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FlagState {
    #[default]
    None = 0,
    Recovering = 1,
    Recovered = 2,
    Failed = 3,
}

impl FlagState {
    /// The on-disk status code.
    pub fn code(self) -> u8 {
        self as u8
    }

    pub fn from_code(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::None),
            1 => Some(Self::Recovering),
            2 => Some(Self::Recovered),
            3 => Some(Self::Failed),
            _ => None,
        }
    }

    /// Lowercase name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Recovering => "recovering",
            Self::Recovered => "recovered",
            Self::Failed => "failed",
        }
    }
}

/// A state name that is none of `none`, `recovering`, `recovered`, `failed`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown state {0:?} (expected none, recovering, recovered or failed)")]
pub struct UnknownState(pub String);

impl std::str::FromStr for FlagState {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, UnknownState> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(Self::None),
            "recovering" => Ok(Self::Recovering),
            "recovered" => Ok(Self::Recovered),
            "failed" => Ok(Self::Failed),
            _ => Err(UnknownState(s.to_string())),
        }
    }
}

/// One flag record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlagRecord {
    pub seq: u64,
    pub state: FlagState,
    pub error_code: u32,
    pub timestamp: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub image_sha256: Sha256,
    pub plan_id: String,
    pub message: String,
}

/// Why a slot is not a valid record. Expected for a blank or torn slot; never fatal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error("flag slot is {0} bytes, expected {SLOT_LEN}")]
    SlotLength(usize),
    #[error("flag slot has no record (bad magic)")]
    NoMagic,
    #[error("flag slot has format version {0}, this build reads version {FORMAT_VERSION}")]
    Version(u16),
    #[error("flag slot checksum mismatch")]
    Checksum,
    #[error("flag slot has invalid field {0}")]
    Field(&'static str),
    #[error("plan id is longer than {MAX_PLAN_ID_LEN} bytes or not printable ASCII")]
    PlanId,
}

/// Checks that a plan id fits a record: at most 64 bytes of printable ASCII.
pub fn validate_plan_id(plan_id: &str) -> Result<(), FlagError> {
    if plan_id.len() > MAX_PLAN_ID_LEN || !plan_id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err(FlagError::PlanId);
    }
    Ok(())
}

impl FlagRecord {
    /// Encodes the record into one slot. The message is cut at [`MAX_MESSAGE_LEN`] bytes on a
    /// character boundary; an invalid plan id is an error.
    pub fn encode(&self) -> Result<[u8; SLOT_LEN], FlagError> {
        validate_plan_id(&self.plan_id)?;
        let mut s = [0u8; SLOT_LEN];
        s[0..8].copy_from_slice(MAGIC);
        s[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        s[10] = self.state.code();
        s[11] = self.plan_id.len() as u8;
        s[12..16].copy_from_slice(&self.error_code.to_le_bytes());
        s[16..24].copy_from_slice(&self.seq.to_le_bytes());
        s[24..32].copy_from_slice(&self.timestamp.to_le_bytes());
        s[32..40].copy_from_slice(&self.bytes_done.to_le_bytes());
        s[40..48].copy_from_slice(&self.bytes_total.to_le_bytes());
        s[48..80].copy_from_slice(&self.image_sha256.0);
        s[PLAN_ID_AT..PLAN_ID_AT + self.plan_id.len()].copy_from_slice(self.plan_id.as_bytes());
        let message = truncate_utf8(&self.message, MAX_MESSAGE_LEN);
        s[MESSAGE_LEN_AT..MESSAGE_AT].copy_from_slice(&(message.len() as u16).to_le_bytes());
        s[MESSAGE_AT..MESSAGE_AT + message.len()].copy_from_slice(message.as_bytes());
        let crc = crc32fast::hash(&s[..CRC_AT]);
        s[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        Ok(s)
    }

    /// Decodes one slot, checking everything.
    pub fn decode(slot: &[u8]) -> Result<Self, FlagError> {
        if slot.len() != SLOT_LEN {
            return Err(FlagError::SlotLength(slot.len()));
        }
        if &slot[0..8] != MAGIC {
            return Err(FlagError::NoMagic);
        }
        let crc = u32::from_le_bytes(le(&slot[CRC_AT..]));
        if crc32fast::hash(&slot[..CRC_AT]) != crc {
            return Err(FlagError::Checksum);
        }
        let version = u16::from_le_bytes(le(&slot[8..10]));
        if version != FORMAT_VERSION {
            return Err(FlagError::Version(version));
        }
        let state = FlagState::from_code(slot[10]).ok_or(FlagError::Field("state"))?;
        let plan_len = usize::from(slot[11]);
        if plan_len > MAX_PLAN_ID_LEN {
            return Err(FlagError::Field("plan id length"));
        }
        let plan_id = core::str::from_utf8(&slot[PLAN_ID_AT..PLAN_ID_AT + plan_len])
            .map_err(|_| FlagError::Field("plan id"))?
            .to_string();
        validate_plan_id(&plan_id)?;
        let message_len = usize::from(u16::from_le_bytes(le(&slot[MESSAGE_LEN_AT..MESSAGE_AT])));
        if message_len > MAX_MESSAGE_LEN {
            return Err(FlagError::Field("message length"));
        }
        let message = core::str::from_utf8(&slot[MESSAGE_AT..MESSAGE_AT + message_len])
            .map_err(|_| FlagError::Field("message"))?
            .to_string();
        Ok(Self {
            seq: u64::from_le_bytes(le(&slot[16..24])),
            state,
            error_code: u32::from_le_bytes(le(&slot[12..16])),
            timestamp: u64::from_le_bytes(le(&slot[24..32])),
            bytes_done: u64::from_le_bytes(le(&slot[32..40])),
            bytes_total: u64::from_le_bytes(le(&slot[40..48])),
            image_sha256: Sha256(le(&slot[48..80])),
            plan_id,
            message,
        })
    }

    /// The record as reported over the wire.
    pub fn summary(&self) -> FlagSummary {
        FlagSummary {
            state: self.state,
            seq: self.seq,
            plan_id: self.plan_id.clone(),
            error_code: self.error_code,
            bytes_done: self.bytes_done,
            timestamp: self.timestamp,
        }
    }
}

/// True when sequence number `a` is newer than `b`, in serial-number arithmetic (RFC 1982), so a
/// sequence that wraps past `u64::MAX` keeps its order. Two slots written by this crate's rules are
/// always one or two apart, far inside the half range where the comparison is exact.
pub fn seq_newer(a: u64, b: u64) -> bool {
    let d = a.wrapping_sub(b);
    d != 0 && d < 1 << 63
}

/// The result of reading both slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotsView {
    /// The current record, if any slot is valid.
    pub current: Option<FlagRecord>,
    /// Index of the slot holding `current`; the next write goes to the other one.
    pub current_slot: Option<usize>,
    /// The decoded record (or reason) for each slot.
    pub slots: [Result<FlagRecord, FlagError>; SLOTS],
}

impl SlotsView {
    /// Decodes the first `SLOTS * SLOT_LEN` bytes of a partition.
    pub fn decode(partition: &[u8]) -> Self {
        let slot = |i: usize| {
            partition
                .get(i * SLOT_LEN..(i + 1) * SLOT_LEN)
                .ok_or(FlagError::SlotLength(
                    partition.len().saturating_sub(i * SLOT_LEN).min(SLOT_LEN),
                ))
                .and_then(FlagRecord::decode)
        };
        let slots = [slot(0), slot(1)];
        let current_slot = match (&slots[0], &slots[1]) {
            (Ok(a), Ok(b)) => Some(if seq_newer(b.seq, a.seq) { 1 } else { 0 }),
            (Ok(_), Err(_)) => Some(0),
            (Err(_), Ok(_)) => Some(1),
            (Err(_), Err(_)) => None,
        };
        let current = current_slot.and_then(|i| slots[i].clone().ok());
        Self {
            current,
            current_slot,
            slots,
        }
    }

    /// The current record, or a blank `none` record when no slot is valid.
    pub fn record(&self) -> FlagRecord {
        self.current.clone().unwrap_or_default()
    }

    /// The slot the next write must go to: the one not holding the current record.
    pub fn next_slot(&self) -> usize {
        match self.current_slot {
            Some(i) => 1 - i,
            None => 0,
        }
    }
}

fn le<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&bytes[..N]);
    out
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(seq: u64, state: FlagState) -> FlagRecord {
        FlagRecord {
            seq,
            state,
            error_code: 17,
            timestamp: 1_764_000_000,
            bytes_done: 1 << 30,
            bytes_total: 2 << 30,
            image_sha256: Sha256([0xab; 32]),
            plan_id: "node-3-20261125T2121Z".into(),
            message: "digest mismatch: éé".into(),
        }
    }

    #[test]
    fn record_round_trips() {
        let r = sample(9, FlagState::Failed);
        assert_eq!(FlagRecord::decode(&r.encode().unwrap()).unwrap(), r);
    }

    #[test]
    fn golden_bytes_of_a_record_header() {
        let s = sample(9, FlagState::Recovered).encode().unwrap();
        assert_eq!(
            crate::hex::encode(&s[..48]),
            "4c5a5253464c4147010002151100000009000000000000000081246900000000\
             00000040000000000000008000000000"
        );
        assert_eq!(&s[80..101], b"node-3-20261125T2121Z");
        assert_eq!(crate::hex::encode(&s[CRC_AT..]), "7c8ff645");
    }

    #[test]
    fn every_single_byte_corruption_is_detected() {
        let s = sample(5, FlagState::Recovered).encode().unwrap();
        for i in 0..SLOT_LEN {
            let mut c = s;
            c[i] ^= 0x5a;
            assert!(
                FlagRecord::decode(&c).is_err(),
                "corruption at byte {i} accepted"
            );
        }
    }

    #[test]
    fn blank_partition_reads_as_none() {
        let view = SlotsView::decode(&[0u8; 2 * SLOT_LEN]);
        assert_eq!(view.current, None);
        assert_eq!(view.record().state, FlagState::None);
        assert_eq!(view.next_slot(), 0);
    }

    #[test]
    fn short_partition_reads_as_none() {
        let view = SlotsView::decode(&[0u8; 100]);
        assert_eq!(view.record().state, FlagState::None);
    }

    #[test]
    fn newer_slot_wins_also_across_wrap() {
        for (a, b, want) in [(1, 2, 1), (2, 1, 0), (u64::MAX, 0, 1), (0, u64::MAX, 0)] {
            let mut p = Vec::new();
            p.extend_from_slice(&sample(a, FlagState::Recovering).encode().unwrap());
            p.extend_from_slice(&sample(b, FlagState::Recovered).encode().unwrap());
            let view = SlotsView::decode(&p);
            assert_eq!(view.current_slot, Some(want), "seqs {a} {b}");
            assert_eq!(view.next_slot(), 1 - want);
        }
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary_and_bad_plan_ids_refused() {
        let mut r = sample(1, FlagState::Failed);
        r.message = "é".repeat(600);
        let d = FlagRecord::decode(&r.encode().unwrap()).unwrap();
        assert_eq!(d.message.len(), 1024);
        r.plan_id = "a".repeat(65);
        assert_eq!(r.encode(), Err(FlagError::PlanId));
        r.plan_id = "has space".into();
        assert_eq!(r.encode(), Err(FlagError::PlanId));
    }

    proptest! {
        #[test]
        fn random_partitions_read_as_none(bytes in proptest::collection::vec(any::<u8>(), 2 * SLOT_LEN)) {
            prop_assert_eq!(SlotsView::decode(&bytes).record().state, FlagState::None);
        }

        #[test]
        fn any_record_round_trips(seq: u64, state in 0u8..4, code: u32, ts: u64, done: u64,
                                  total: u64, digest: [u8; 32], plan in "[!-~]{0,64}",
                                  message in "\\PC{0,300}") {
            let r = FlagRecord { seq, state: FlagState::from_code(state).unwrap(), error_code: code,
                timestamp: ts, bytes_done: done, bytes_total: total, image_sha256: Sha256(digest),
                plan_id: plan, message };
            prop_assert_eq!(FlagRecord::decode(&r.encode().unwrap()).unwrap(), r);
        }
    }
}
