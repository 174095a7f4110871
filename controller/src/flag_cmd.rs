//! `lazarus flag …`: format, show, set and clear a flag file or partition.

use std::path::Path;

use lazarus_node::flag_store::{FlagStore, FlagUpdate, StoreError};
use lazarus_proto::flag::{FlagRecord, FlagState};
use serde::Serialize;

/// Errors of the flag commands.
#[derive(Debug, thiserror::Error)]
pub enum FlagCmdError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("encoding the record as JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// The JSON form of a record printed by `lazarus flag show --json`.
#[derive(Debug, Serialize)]
pub struct FlagJson<'a> {
    pub state: &'static str,
    pub seq: u64,
    pub plan_id: &'a str,
    pub error_code: u32,
    pub message: &'a str,
    pub bytes_done: u64,
    pub bytes_total: u64,
    pub image_sha256: String,
    pub timestamp: u64,
}

impl<'a> From<&'a FlagRecord> for FlagJson<'a> {
    fn from(r: &'a FlagRecord) -> Self {
        Self {
            state: r.state.name(),
            seq: r.seq,
            plan_id: &r.plan_id,
            error_code: r.error_code,
            message: &r.message,
            bytes_done: r.bytes_done,
            bytes_total: r.bytes_total,
            image_sha256: r.image_sha256.to_hex(),
            timestamp: r.timestamp,
        }
    }
}

/// `flag init PATH`.
pub fn init(path: &Path, force: bool) -> Result<String, FlagCmdError> {
    FlagStore::format(path, force)?;
    Ok(format!(
        "formatted {} as a Lazarus flag partition (state none)",
        path.display()
    ))
}

/// `flag show [--json] PATH`.
pub fn show(path: &Path, json: bool) -> Result<String, FlagCmdError> {
    let record = FlagStore::open(path)?.read()?;
    render(&record, json)
}

/// `flag set PATH --state …` and `flag clear PATH`.
pub fn set(path: &Path, update: &FlagUpdate, json: bool) -> Result<String, FlagCmdError> {
    let record = FlagStore::open(path)?.write(update)?;
    render(&record, json)
}

/// `flag clear PATH`: a `none` record with the next sequence number.
pub fn clear(path: &Path, json: bool) -> Result<String, FlagCmdError> {
    set(path, &FlagUpdate::state(FlagState::None), json)
}

fn render(r: &FlagRecord, json: bool) -> Result<String, FlagCmdError> {
    if json {
        return Ok(serde_json::to_string(&FlagJson::from(r))?);
    }
    let when = if r.timestamp == 0 {
        "-".to_string()
    } else {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(r.timestamp);
        humantime::format_rfc3339_seconds(t).to_string()
    };
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    Ok(format!(
        "state:       {}\nseq:         {}\nplan id:     {}\nerror code:  {}\nmessage:     {}\n\
         progress:    {} / {} bytes\nimage:       {}\ntimestamp:   {}",
        r.state.name(),
        r.seq,
        dash(&r.plan_id),
        r.error_code,
        dash(&r.message),
        r.bytes_done,
        r.bytes_total,
        if r.image_sha256.0 == [0; 32] {
            "-".to_string()
        } else {
            r.image_sha256.to_hex()
        },
        when
    ))
}
