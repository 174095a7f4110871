//! Reading a GPT partition table in userspace.
//!
//! The agent finds partitions by GPT name (the flag partition's `lazarus-flag`) from the table
//! itself rather than from udev or the kernel's `PARTNAME`, and can register partitions with the
//! kernel (BLKPG) when the kernel was built without a GPT parser (seen on the Firecracker-style
//! host kernels of our CI machines: BLKRRPART succeeds and finds nothing).
//!
//! [`read_gpt`] reads only the primary header: the engine zeroes the first MiB of a disk whose
//! copy failed, and a disk whose primary GPT is gone must not be mistaken for a whole one.
//! [`read_backup_gpt`] reads the backup header at the disk's last block, only to *find* the flag
//! partition of such a disk (a copy interrupted by a power cut), never to register partitions.
//!
//! Every field is untrusted: sizes and offsets are computed with checked arithmetic, and a
//! malformed table is an error, never a panic or an overflow (`gpt_parse` fuzz target).

use std::io;
use std::os::unix::fs::FileExt;

/// A used GPT entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GptPartition {
    /// 1-based, as the kernel numbers partitions.
    pub number: u32,
    pub name: String,
    /// Byte offset on the disk.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Why a disk has no usable GPT.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("reading the partition table: {0}")]
    Io(#[from] io::Error),
    #[error("no GPT header (signature missing)")]
    NoHeader,
    #[error("GPT {0} is invalid")]
    Invalid(&'static str),
}

const MAX_ENTRIES: u32 = 1024;
const MAX_ENTRY_LEN: u32 = 1024;

/// Which of the two headers to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// LBA 1.
    Primary,
    /// The disk's last LBA.
    Backup,
}

/// Reads the primary GPT of a disk of `disk_len` bytes with `sector` bytes per logical block.
pub fn read_gpt(
    disk: &impl FileExt,
    sector: u64,
    disk_len: u64,
) -> Result<Vec<GptPartition>, GptError> {
    parse_gpt(
        |buf, offset| disk.read_exact_at(buf, offset),
        sector,
        Header::Primary,
        Some(disk_len),
    )
}

/// Reads the backup GPT (header at the disk's last LBA) of a disk of `disk_len` bytes.
pub fn read_backup_gpt(
    disk: &impl FileExt,
    sector: u64,
    disk_len: u64,
) -> Result<Vec<GptPartition>, GptError> {
    parse_gpt(
        |buf, offset| disk.read_exact_at(buf, offset),
        sector,
        Header::Backup,
        Some(disk_len),
    )
}

/// Reads the primary GPT from the first bytes of an image held in memory (its first MiB). The
/// image's partitions may extend past what is held, so only arithmetic bounds them.
pub fn read_gpt_bytes(head: &[u8], sector: u64) -> Result<Vec<GptPartition>, GptError> {
    parse_gpt(slice_reader(head), sector, Header::Primary, None)
}

/// Reads the primary or (`backup`) the backup GPT of a whole disk held in memory: for the fuzz
/// target and property tests.
pub fn read_disk_bytes(
    disk: &[u8],
    sector: u64,
    backup: bool,
) -> Result<Vec<GptPartition>, GptError> {
    let which = if backup {
        Header::Backup
    } else {
        Header::Primary
    };
    parse_gpt(slice_reader(disk), sector, which, Some(disk.len() as u64))
}

fn slice_reader(bytes: &[u8]) -> impl Fn(&mut [u8], u64) -> io::Result<()> + '_ {
    |buf, offset| {
        let eof = || io::Error::from(io::ErrorKind::UnexpectedEof);
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        buf.copy_from_slice(bytes.get(start..end).ok_or_else(eof)?);
        Ok(())
    }
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn parse_gpt(
    read_at: impl Fn(&mut [u8], u64) -> io::Result<()>,
    sector: u64,
    which: Header,
    disk_len: Option<u64>,
) -> Result<Vec<GptPartition>, GptError> {
    if !matches!(sector, 512 | 1024 | 2048 | 4096) {
        return Err(GptError::Invalid("sector size"));
    }
    // The number of whole blocks on the disk, when its length is known.
    let blocks = disk_len.map(|len| len / sector);
    let header_lba = match which {
        Header::Primary => 1,
        Header::Backup => match blocks {
            Some(n) if n >= 2 => n - 1,
            _ => return Err(GptError::NoHeader),
        },
    };
    let header_at = header_lba
        .checked_mul(sector)
        .ok_or(GptError::Invalid("header position"))?;
    let mut header = vec![0u8; sector as usize];
    read_at(&mut header, header_at)?;
    if &header[..8] != b"EFI PART" {
        return Err(GptError::NoHeader);
    }
    let header_len = u32_at(&header, 12) as usize;
    if !(92..=sector as usize).contains(&header_len) {
        return Err(GptError::Invalid("header size"));
    }
    let crc = u32_at(&header, 16);
    let mut copy = header[..header_len].to_vec();
    copy[16..20].fill(0);
    if crc32fast::hash(&copy) != crc {
        return Err(GptError::Invalid("header checksum"));
    }
    if which == Header::Backup && u64_at(&header, 24) != header_lba {
        return Err(GptError::Invalid("header position"));
    }
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_len = u32_at(&header, 84);
    if count > MAX_ENTRIES
        || entry_len < 128
        || !entry_len.is_multiple_of(8)
        || entry_len > MAX_ENTRY_LEN
    {
        return Err(GptError::Invalid("entry layout"));
    }
    let entries_len = u64::from(count) * u64::from(entry_len); // at most 1 MiB: both bounded
    let entries_at = entries_lba
        .checked_mul(sector)
        .ok_or(GptError::Invalid("entry position"))?;
    let entries_end = entries_at
        .checked_add(entries_len)
        .ok_or(GptError::Invalid("entry position"))?;
    if disk_len.is_some_and(|len| entries_end > len) {
        return Err(GptError::Invalid("entry position"));
    }
    let mut entries = vec![0u8; entries_len as usize];
    read_at(&mut entries, entries_at)?;
    if crc32fast::hash(&entries) != u32_at(&header, 88) {
        return Err(GptError::Invalid("entries checksum"));
    }
    let mut out = Vec::new();
    for (i, e) in entries.chunks_exact(entry_len as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if last < first {
            return Err(GptError::Invalid("partition bounds"));
        }
        if blocks.is_some_and(|n| last >= n) {
            return Err(GptError::Invalid(
                "partition end (past the end of the disk)",
            ));
        }
        let start = first
            .checked_mul(sector)
            .ok_or(GptError::Invalid("partition start"))?;
        let len = (last - first)
            .checked_add(1)
            .and_then(|n| n.checked_mul(sector))
            .filter(|len| start.checked_add(*len).is_some())
            .ok_or(GptError::Invalid("partition length"))?;
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(GptPartition {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&units),
            start,
            len,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A disk with a valid primary and backup GPT holding the given (first LBA, last LBA, name)
    /// entries, 512-byte sectors, 34 sectors past the last partition.
    pub fn make_gpt(parts: &[(u64, u64, &str)]) -> Vec<u8> {
        let sectors = parts.iter().map(|p| p.1 + 1).max().unwrap_or(34).max(34) + 34;
        let mut disk = vec![0u8; sectors as usize * 512];
        let mut entries = vec![0u8; 128 * 128];
        for (i, (first, last, name)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(&[0xaf; 16]);
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let last_lba = sectors - 1;
        for (my, alt, entries_lba) in [(1, last_lba, 2), (last_lba, 1, last_lba - 32)] {
            let mut h = [0u8; 92];
            h[..8].copy_from_slice(b"EFI PART");
            h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
            h[12..16].copy_from_slice(&92u32.to_le_bytes());
            h[24..32].copy_from_slice(&u64::to_le_bytes(my));
            h[32..40].copy_from_slice(&u64::to_le_bytes(alt));
            h[40..48].copy_from_slice(&34u64.to_le_bytes());
            h[48..56].copy_from_slice(&(last_lba - 33).to_le_bytes());
            h[72..80].copy_from_slice(&u64::to_le_bytes(entries_lba));
            h[80..84].copy_from_slice(&128u32.to_le_bytes());
            h[84..88].copy_from_slice(&128u32.to_le_bytes());
            h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
            let crc = crc32fast::hash(&h);
            h[16..20].copy_from_slice(&crc.to_le_bytes());
            let at = my as usize * 512;
            disk[at..at + 92].copy_from_slice(&h);
            let at = entries_lba as usize * 512;
            disk[at..at + entries.len()].copy_from_slice(&entries);
        }
        disk
    }

    fn on_file(bytes: &[u8]) -> (tempfile::TempDir, std::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        std::fs::write(&path, bytes).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        (dir, f)
    }

    fn expected() -> Vec<GptPartition> {
        vec![
            GptPartition {
                number: 1,
                name: "root".into(),
                start: 2048 * 512,
                len: 2048 * 512,
            },
            GptPartition {
                number: 2,
                name: "lazarus-flag".into(),
                start: 4096 * 512,
                len: 2048 * 512,
            },
        ]
    }

    #[test]
    fn reads_names_and_extents() {
        let disk = make_gpt(&[(2048, 4095, "root"), (4096, 6143, "lazarus-flag")]);
        let (_d, f) = on_file(&disk);
        assert_eq!(read_gpt(&f, 512, disk.len() as u64).unwrap(), expected());
        assert_eq!(read_gpt_bytes(&disk[..1 << 20], 512).unwrap(), expected());
    }

    #[test]
    fn the_backup_table_is_found_when_the_first_mib_is_zeroed() {
        let mut disk = make_gpt(&[(2048, 4095, "root"), (4096, 6143, "lazarus-flag")]);
        disk[..1 << 20].fill(0);
        let (_d, f) = on_file(&disk);
        let len = disk.len() as u64;
        assert!(matches!(read_gpt(&f, 512, len), Err(GptError::NoHeader)));
        assert_eq!(read_backup_gpt(&f, 512, len).unwrap(), expected());
        // A backup header that is not at the last block is not believed.
        let mut longer = disk.clone();
        longer.extend_from_slice(&[0u8; 512]);
        assert!(read_disk_bytes(&longer, 512, true).is_err());
    }

    #[test]
    fn a_damaged_or_missing_table_is_an_error() {
        let good = make_gpt(&[(2048, 4095, "root")]);
        for (at, what) in [
            (512, "signature"),
            (512 + 20, "header"),
            (1024 + 60, "entries"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0xff;
            let (_d, f) = on_file(&bad);
            assert!(
                read_gpt(&f, 512, bad.len() as u64).is_err(),
                "{what} damage accepted"
            );
        }
        let (_d, f) = on_file(&vec![0u8; 34 * 512]);
        assert!(matches!(
            read_gpt(&f, 512, 34 * 512),
            Err(GptError::NoHeader)
        ));
    }

    /// Rewrites a header field of the primary table and fixes its checksum, so the parser gets
    /// past the CRC to the arithmetic.
    fn with_field(disk: &[u8], at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut d = disk.to_vec();
        d[512 + at..512 + at + bytes.len()].copy_from_slice(bytes);
        d[512 + 16..512 + 20].fill(0);
        let crc = crc32fast::hash(&d[512..512 + 92]);
        d[512 + 16..512 + 20].copy_from_slice(&crc.to_le_bytes());
        d
    }

    /// Rewrites entry `i`'s first and last LBA and fixes both checksums.
    fn with_entry(disk: &[u8], first: u64, last: u64) -> Vec<u8> {
        let mut d = disk.to_vec();
        d[1024 + 32..1024 + 40].copy_from_slice(&first.to_le_bytes());
        d[1024 + 40..1024 + 48].copy_from_slice(&last.to_le_bytes());
        let crc = crc32fast::hash(&d[1024..1024 + 128 * 128]);
        with_field(&d, 88, &crc.to_le_bytes())
    }

    #[test]
    fn overflowing_or_out_of_disk_fields_are_errors() {
        let good = make_gpt(&[(2048, 4095, "root")]);
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "entries lba overflows",
                with_field(&good, 72, &u64::MAX.to_le_bytes()),
            ),
            (
                "entries past the end",
                with_field(&good, 72, &(1u64 << 40).to_le_bytes()),
            ),
            (
                "too many entries",
                with_field(&good, 80, &u32::MAX.to_le_bytes()),
            ),
            ("entry size", with_field(&good, 84, &u32::MAX.to_le_bytes())),
            (
                "header size",
                with_field(&good, 12, &u32::MAX.to_le_bytes()),
            ),
            (
                "start overflows",
                with_entry(&good, u64::MAX / 2, u64::MAX / 2 + 1),
            ),
            ("end past the disk", with_entry(&good, 2048, 1 << 30)),
            ("length overflows", with_entry(&good, 0, u64::MAX)),
            ("end before start", with_entry(&good, 4095, 2048)),
        ];
        for (what, disk) in cases {
            assert!(
                read_disk_bytes(&disk, 512, false).is_err(),
                "{what} accepted"
            );
            // Without a disk length (an image's head) the arithmetic still bounds it.
            let head = &disk[..disk.len().min(1 << 20)];
            if what != "end past the disk" && what != "entries past the end" {
                assert!(
                    read_gpt_bytes(head, 512).is_err(),
                    "{what} accepted in a head"
                );
            }
        }
        assert!(matches!(
            read_disk_bytes(&good, 513, false),
            Err(GptError::Invalid("sector size"))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..20_000),
                                    sector in prop_oneof![Just(512u64), Just(4096), any::<u64>()]) {
            let _ = read_gpt_bytes(&bytes, sector);
            let _ = read_disk_bytes(&bytes, sector, false);
            let _ = read_disk_bytes(&bytes, sector, true);
        }

        #[test]
        fn random_header_and_entry_fields_never_panic(
            field in prop_oneof![Just(12usize), Just(72), Just(80), Just(84)],
            value in any::<u64>(),
            first in any::<u64>(),
            last in any::<u64>(),
        ) {
            let good = make_gpt(&[(2048, 4095, "root")]);
            let width = if field == 72 { 8 } else { 4 };
            let disk = with_field(&with_entry(&good, first, last), field, &value.to_le_bytes()[..width]);
            if let Ok(parts) = read_disk_bytes(&disk, 512, false) {
                for p in parts {
                    prop_assert!(p.start.checked_add(p.len).is_some_and(|end| end <= disk.len() as u64));
                }
            }
            let _ = read_gpt_bytes(&disk[..1 << 20], 512);
        }
    }
}
