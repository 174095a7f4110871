//! The API's Unix socket on disk: made with mode 0660 and its group before anyone can connect,
//! replacing a stale socket a crash left behind, never a live one (another controller) nor a file
//! that is not a socket.
//!
//! The socket is bound inside a fresh private folder (mode 0700), given its mode and group there,
//! then renamed into place: a socket bound at its final path would be reachable with the umask's
//! mode until the `chmod`, and a connection made in that window would be served.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::HttpError;

/// The socket's mode: owner and group read and write (connecting needs write permission).
pub const SOCKET_MODE: u32 = 0o660;

/// Binds the API's socket at `path`, owned by group `gid` (or the daemon's own).
pub fn bind(path: &Path, gid: Option<u32>) -> Result<UnixListener, HttpError> {
    let io = |what: &'static str, p: &Path| {
        let p = p.to_owned();
        move |e| HttpError::Socket(what, p, e)
    };
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| {
            HttpError::Socket(
                "naming its folder",
                path.to_owned(),
                ErrorKind::InvalidInput.into(),
            )
        })?;
    // The folder is traversable by all (0755); the socket's own mode decides who connects.
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(parent)
        .map_err(io("creating its folder", path))?;
    remove_stale(path)?;
    // Short names: a socket's path has at most 107 bytes, and this one is longer than the final.
    let private = parent.join(format!(
        ".{}.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    // A folder left by an earlier crash of this same pid number.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(io("creating a private folder", path))?;
    let result = bind_in(&private, path, gid);
    let _ = std::fs::remove_dir_all(&private);
    result
}

fn bind_in(private: &Path, path: &Path, gid: Option<u32>) -> Result<UnixListener, HttpError> {
    let tmp = private.join("s");
    let err = |what: &'static str| {
        let p = path.to_owned();
        move |e| HttpError::Socket(what, p, e)
    };
    let listener = UnixListener::bind(&tmp).map_err(err("binding"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(err("setting its mode"))?;
    if let Some(gid) = gid {
        rustix::fs::chown(&tmp, None, Some(rustix::fs::Gid::from_raw(gid)))
            .map_err(|e| HttpError::Socket("setting its group", path.to_owned(), e.into()))?;
    }
    std::fs::rename(&tmp, path).map_err(err("moving it into place"))?;
    Ok(listener)
}

/// Removes `path` if it is a socket nobody listens on; refuses a live socket and anything else.
fn remove_stale(path: &Path) -> Result<(), HttpError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(HttpError::Socket("looking at it", path.to_owned(), e)),
    };
    if !meta.file_type().is_socket() {
        return Err(HttpError::NotSocket(path.to_owned()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(HttpError::Live(path.to_owned())),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
            log::info!("API: replacing the stale socket {}", path.display());
            std::fs::remove_file(path)
                .map_err(|e| HttpError::Socket("removing the stale socket", path.to_owned(), e))
        }
        Err(e) => Err(HttpError::Socket("probing it", path.to_owned(), e)),
    }
}

/// The group id `spec` names: a number, or a name in `/etc/group`.
pub fn group_id(spec: &str) -> Result<u32, HttpError> {
    if let Ok(gid) = spec.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").map_err(HttpError::GroupFile)?;
    gid_in(&text, spec).ok_or_else(|| HttpError::Group(spec.to_string()))
}

/// The id of group `name` in the text of an `/etc/group` file (`name:x:gid:members`).
fn gid_in(etc_group: &str, name: &str) -> Option<u32> {
    etc_group.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name)
            .then(|| fields.nth(1)?.trim().parse().ok())
            .flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn groups_are_found_by_name_or_number() {
        let etc = "root:x:0:\n# comment\nlazarus:x:977:alice,bob\nbad:x:notanumber:\n";
        assert_eq!(gid_in(etc, "lazarus"), Some(977));
        assert_eq!(gid_in(etc, "root"), Some(0));
        assert_eq!(gid_in(etc, "lazar"), None);
        assert_eq!(gid_in(etc, "bad"), None);
        assert_eq!(group_id("1234").unwrap(), 1234);
    }

    #[test]
    fn a_socket_is_made_0660_a_stale_one_replaced_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/api.sock");
        let live = bind(&path, None).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o660);
        let e = bind(&path, None).unwrap_err();
        assert!(matches!(e, HttpError::Live(_)), "{e}");
        drop(live);
        // The listener is gone, its file stays: stale.
        let again = bind(&path, None).unwrap();
        drop(again);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("run"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["api.sock"], "no private folder left behind");
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        std::fs::write(&path, "precious").unwrap();
        let e = bind(&path, None).unwrap_err();
        assert!(matches!(e, HttpError::NotSocket(_)), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    }
}
