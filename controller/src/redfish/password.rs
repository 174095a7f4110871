//! The BMC password file (`password_file`): read only if it is a regular file that no one but
//! its owner can read or write (mode `0600` or stricter), so a password the rest of the control
//! node can read is refused rather than used. It must not block on a FIFO or a device put in the
//! file's place, nor read more than a password's worth.

use std::io::Read;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};

/// More than any password; a larger file is not a password file.
const MAX_LEN: u64 = 4096;

/// A password file that is not used, and why.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("BMC password file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("BMC password file {}: not a regular file", path.display())]
    NotRegular { path: PathBuf },
    #[error(
        "BMC password file {}: mode {mode:04o} lets group or others in; make it 0600 (chmod 600)",
        path.display()
    )]
    Mode { path: PathBuf, mode: u32 },
    #[error("BMC password file {}: longer than {MAX_LEN} bytes", path.display())]
    TooLong { path: PathBuf },
}

/// The password in `path` without its trailing whitespace (newline), after checking the file.
pub fn read_password_file(path: &Path) -> Result<String, PasswordFileError> {
    let read = |source: std::io::Error| PasswordFileError::Read {
        path: path.to_owned(),
        source,
    };
    // NONBLOCK: opening a FIFO put in the file's place must not hang the provider; the type is
    // checked on the open file, so it cannot be swapped between the check and the read.
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| read(e.into()))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| read(e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(PasswordFileError::NotRegular {
            path: path.to_owned(),
        });
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o077 != 0 {
        return Err(PasswordFileError::Mode {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = String::new();
    std::fs::File::from(fd)
        .take(MAX_LEN + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_LEN {
        return Err(PasswordFileError::TooLong {
            path: path.to_owned(),
        });
    }
    Ok(text.trim_end().to_string())
}
