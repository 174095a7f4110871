//! The members of a tar stream, read with bounded memory.
//!
//! The `tar` crate, left to itself, reads a GNU long name or long link (`L`, `K`) or a PAX
//! record set (`x`) in full into memory, however large its header says it is: a small zstd
//! archive can claim a name of gigabytes, and a failed allocation aborts PID 1. So the archive
//! is read in the crate's *raw* mode (it only splits the stream into headers and data, by each
//! header's own size field) and the extensions are applied here: each one's size is checked
//! against [`MAX_EXTENSION`] *before* a byte of it is read, and then at most that much is read.
//!
//! Raw mode also means the crate and this module agree on where every member starts: a PAX
//! `size` record (which other readers honour and raw mode does not) is refused unless it equals
//! the header's, and GNU sparse members (which carry extra headers) are refused; `lazarus
//! backup` writes neither. A PAX global header (`g`) is skipped, as the `tar` crate does.

use std::io::Read;
use std::path::PathBuf;

use tar::EntryType;

use super::BackupError;

/// The largest GNU long name, long link or PAX record set read (64 KiB; `PATH_MAX` is 4 KiB).
pub const MAX_EXTENSION: u64 = 64 * 1024;

/// One member of the archive, extensions applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub path: PathBuf,
    pub link: Option<PathBuf>,
    pub kind: EntryType,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub size: u64,
}

/// Extensions seen since the last member, waiting for the member they describe.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

fn corrupt(e: impl std::fmt::Display) -> BackupError {
    BackupError::Corrupt(e.to_string())
}

/// Calls `each` with every member of the tar stream and a reader of its data, in order;
/// returns the number of members. Extensions are capped at [`MAX_EXTENSION`] before they are
/// read.
pub fn for_each_member<R: Read>(
    stream: R,
    mut each: impl FnMut(&Member, &mut dyn Read) -> Result<(), BackupError>,
) -> Result<u64, BackupError> {
    let mut archive = tar::Archive::new(stream);
    let entries = archive.entries().map_err(corrupt)?.raw(true);
    let mut pending = Pending::default();
    let mut count = 0;
    for entry in entries {
        let mut entry = entry.map_err(corrupt)?;
        let header = entry.header();
        let kind = header.entry_type();
        let size = header.entry_size().map_err(corrupt)?;
        let slot = match kind {
            EntryType::GNULongName => Some(&mut pending.long_name),
            EntryType::GNULongLink => Some(&mut pending.long_link),
            EntryType::XHeader => Some(&mut pending.pax),
            EntryType::XGlobalHeader => None,
            _ => {
                let member = member(header, &pending)?;
                pending = Pending::default();
                each(&member, &mut entry)?;
                count += 1;
                continue;
            }
        };
        if size > MAX_EXTENSION {
            return Err(BackupError::HeaderTooLarge {
                kind: kind_name(kind),
                size,
                max: MAX_EXTENSION,
            });
        }
        match slot {
            // A global PAX header is skipped unread (its data is passed over by the crate).
            None => {}
            Some(slot) if slot.is_some() => {
                return Err(corrupt(format!(
                    "two {} headers for one member",
                    kind_name(kind)
                )))
            }
            Some(slot) => {
                let mut data = Vec::with_capacity(size as usize);
                (&mut entry)
                    .take(size)
                    .read_to_end(&mut data)
                    .map_err(corrupt)?;
                if data.len() as u64 != size {
                    return Err(corrupt(format!("truncated {} header", kind_name(kind))));
                }
                *slot = Some(data);
            }
        }
    }
    if !pending.is_empty() {
        return Err(corrupt("extension headers at the end describe no member"));
    }
    Ok(count)
}

/// What an extension header is, for messages.
fn kind_name(kind: EntryType) -> &'static str {
    match kind {
        EntryType::GNULongName => "GNU long name",
        EntryType::GNULongLink => "GNU long link",
        EntryType::XHeader => "PAX",
        _ => "PAX global",
    }
}

/// A member from its raw header and the extensions before it.
fn member(header: &tar::Header, pending: &Pending) -> Result<Member, BackupError> {
    let kind = header.entry_type();
    if kind == EntryType::GNUSparse {
        return Err(BackupError::UnsafeEntry {
            entry: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
            reason: "GNU sparse member (lazarus backup never writes one)",
        });
    }
    let size = header.entry_size().map_err(corrupt)?;
    let mut path = None;
    let mut link = None;
    let mut uid = None;
    let mut gid = None;
    let mut mtime = None;
    for ext in tar::PaxExtensions::new(pending.pax.as_deref().unwrap_or_default()) {
        let ext = ext.map_err(|e| corrupt(format!("PAX record: {e}")))?;
        let key = ext
            .key()
            .map_err(|_| corrupt("PAX record key is not UTF-8"))?;
        let number = || -> Result<u64, BackupError> {
            let v = ext.value().map_err(|_| corrupt("PAX value is not UTF-8"))?;
            // `mtime` may carry a fraction; the restore keeps whole seconds.
            let whole = v.split('.').next().unwrap_or(v);
            whole
                .parse()
                .map_err(|_| corrupt(format!("PAX {key} is not a number: {v:?}")))
        };
        match key {
            "path" => path = Some(ext.value_bytes().to_vec()),
            "linkpath" => link = Some(ext.value_bytes().to_vec()),
            "uid" => uid = Some(number()?),
            "gid" => gid = Some(number()?),
            "mtime" => mtime = Some(number()?),
            "size" if number()? != size => {
                return Err(BackupError::UnsafeEntry {
                    entry: String::from_utf8_lossy(&header.path_bytes()).into_owned(),
                    reason: "PAX size differs from the header's (readers would disagree)",
                })
            }
            _ => {}
        }
    }
    let path = pending
        .long_name
        .clone()
        .or(path)
        .unwrap_or_else(|| header.path_bytes().into_owned());
    let link = pending
        .long_link
        .clone()
        .or(link)
        .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
    Ok(Member {
        path: path_of(path)?,
        link: link.map(path_of).transpose()?,
        kind,
        mode: header.mode().map_err(corrupt)?,
        uid: uid.map_or_else(|| header.uid().map_err(corrupt), Ok)?,
        gid: gid.map_or_else(|| header.gid().map_err(corrupt), Ok)?,
        mtime: mtime.map_or_else(|| header.mtime().map_err(corrupt), Ok)?,
        size,
    })
}

/// A path from name bytes: trailing NULs dropped, an inner NUL refused.
fn path_of(mut bytes: Vec<u8>) -> Result<PathBuf, BackupError> {
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    if bytes.contains(&0) {
        return Err(BackupError::UnsafeEntry {
            entry: String::from_utf8_lossy(&bytes).into_owned(),
            reason: "name holds a NUL byte",
        });
    }
    Ok(PathBuf::from(
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A raw 512-byte ustar header, written byte by byte (no `tar` crate checks).
    fn raw_header(name: &[u8], kind: u8, size_field: &[u8; 12]) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        h[100..108].copy_from_slice(b"0000644\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(size_field);
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn octal(n: u64) -> [u8; 12] {
        let mut f = [0u8; 12];
        f[..11].copy_from_slice(format!("{n:011o}").as_bytes());
        f
    }

    /// The GNU base-256 form of a size (high bit set, big-endian).
    fn base256(n: u64) -> [u8; 12] {
        let mut f = [0u8; 12];
        f[4..].copy_from_slice(&n.to_be_bytes());
        f[0] = 0x80;
        f
    }

    fn members(bytes: &[u8]) -> Result<Vec<Member>, BackupError> {
        let mut out = Vec::new();
        for_each_member(bytes, |m, _| {
            out.push(m.clone());
            Ok(())
        })?;
        Ok(out)
    }

    /// A stream that yields `len` zero bytes without holding them.
    struct Zeros(u64);
    impl Read for Zeros {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0 as usize);
            buf[..n].fill(0);
            self.0 -= n as u64;
            Ok(n)
        }
    }

    #[test]
    fn a_huge_long_name_or_pax_header_is_refused_before_it_is_read() {
        for kind in [b'L', b'K', b'x', b'g'] {
            for size in [MAX_EXTENSION + 1, 4 << 30, u64::MAX >> 8] {
                let field = if size < 1 << 33 {
                    octal(size)
                } else {
                    base256(size)
                };
                let header = raw_header(b"././@LongLink", kind, &field);
                // The header is followed by "data" that would take gigabytes: a reader that
                // read it first would be slow and huge; the refusal comes from the header.
                let stream = (&header[..]).chain(Zeros(size.min(8 << 30)));
                let started = std::time::Instant::now();
                let err = for_each_member(stream, |_, _| Ok(())).unwrap_err();
                assert!(
                    matches!(err, BackupError::HeaderTooLarge { size: s, .. } if s == size),
                    "{} {size}: {err}",
                    kind as char
                );
                assert!(started.elapsed() < std::time::Duration::from_secs(2));
            }
        }
    }

    #[test]
    fn long_names_and_pax_records_up_to_the_cap_are_applied() {
        let long = "d/".repeat(1000) + "file";
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o640);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(EntryType::Regular);
        b.append_data(&mut h, &long, &b"abc"[..]).unwrap();
        b.append_pax_extensions([
            ("path", &b"pax/name"[..]),
            ("uid", b"123456789"),
            ("mtime", b"1700000000.5"),
        ])
        .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o777);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(EntryType::Symlink);
        h.set_path("short").unwrap();
        h.set_link_name("target").unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let got = members(&b.into_inner().unwrap()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].path, PathBuf::from(&long));
        assert_eq!((got[0].mode, got[0].size), (0o640, 3));
        assert_eq!(got[1].path, PathBuf::from("pax/name"));
        assert_eq!(got[1].link, Some(PathBuf::from("target")));
        assert_eq!((got[1].uid, got[1].mtime), (123_456_789, 1_700_000_000));
    }

    #[test]
    fn an_extension_of_exactly_the_cap_is_read_and_one_byte_more_is_not() {
        for (len, ok) in [(MAX_EXTENSION, true), (MAX_EXTENSION + 1, false)] {
            let mut bytes = raw_header(b"././@LongLink", b'L', &octal(len)).to_vec();
            let mut name = vec![b'n'; len as usize];
            name[len as usize - 1] = 0;
            bytes.extend_from_slice(&name);
            bytes.resize(bytes.len().next_multiple_of(512), 0);
            bytes.extend_from_slice(&raw_header(b"x", b'0', &octal(0)));
            bytes.extend_from_slice(&[0; 1024]);
            let got = members(&bytes);
            assert_eq!(got.is_ok(), ok, "{len}: {got:?}");
            if ok {
                assert_eq!(got.unwrap()[0].path.as_os_str().len() as u64, len - 1);
            }
        }
    }

    #[test]
    fn a_pax_size_unlike_the_header_and_sparse_members_are_refused() {
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("size", &b"1000"[..])]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(EntryType::Regular);
        h.set_path("f").unwrap();
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
        let err = members(&b.into_inner().unwrap()).unwrap_err();
        assert!(matches!(err, BackupError::UnsafeEntry { .. }), "{err}");
        let mut bytes = raw_header(b"sparse", b'S', &octal(0)).to_vec();
        bytes.extend_from_slice(&[0; 1024]);
        let err = members(&bytes).unwrap_err();
        assert!(matches!(err, BackupError::UnsafeEntry { .. }), "{err}");
    }

    #[test]
    fn names_with_a_nul_and_dangling_extensions_are_refused() {
        let mut bytes = raw_header(b"././@LongLink", b'L', &octal(4)).to_vec();
        bytes.extend_from_slice(b"a\0b\0");
        bytes.resize(1024, 0);
        bytes.extend_from_slice(&raw_header(b"x", b'0', &octal(0)));
        bytes.extend_from_slice(&[0; 1024]);
        assert!(matches!(
            members(&bytes),
            Err(BackupError::UnsafeEntry { .. })
        ));
        let mut bytes = raw_header(b"././@LongLink", b'L', &octal(2)).to_vec();
        bytes.extend_from_slice(b"a\0");
        bytes.resize(1024, 0);
        bytes.extend_from_slice(&[0; 1024]);
        assert!(matches!(members(&bytes), Err(BackupError::Corrupt(_))));
    }
}
