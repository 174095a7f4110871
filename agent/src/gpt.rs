//! Reading a GPT partition table in userspace.
//!
//! The agent finds partitions by GPT name (the flag partition's `lazarus-flag`) from the table
//! itself rather than from udev or the kernel's `PARTNAME`, and can register partitions with the
//! kernel (BLKPG) when the kernel was built without a GPT parser (seen on the Firecracker-style
//! host kernels of our CI machines: BLKRRPART succeeds and finds nothing). Only the primary
//! header is read: the engine zeroes the first MiB of a disk whose copy failed, and a disk whose
//! primary GPT is gone must not be mistaken for a whole one.

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

/// Reads the primary GPT of a disk with `sector` bytes per logical block.
pub fn read_gpt(disk: &impl FileExt, sector: u64) -> Result<Vec<GptPartition>, GptError> {
    parse_gpt(|buf, offset| disk.read_exact_at(buf, offset), sector)
}

/// Reads the primary GPT from the first bytes of an image held in memory (its first MiB).
pub fn read_gpt_bytes(head: &[u8], sector: u64) -> Result<Vec<GptPartition>, GptError> {
    parse_gpt(
        |buf, offset| {
            let start = usize::try_from(offset)
                .map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            let src = head
                .get(start..start + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(src);
            Ok(())
        },
        sector,
    )
}

fn parse_gpt(
    read_at: impl Fn(&mut [u8], u64) -> io::Result<()>,
    sector: u64,
) -> Result<Vec<GptPartition>, GptError> {
    let mut header = vec![0u8; sector as usize];
    read_at(&mut header, sector)?;
    if &header[..8] != b"EFI PART" {
        return Err(GptError::NoHeader);
    }
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(a)
    };
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
    let entries_lba = u64_at(&header, 72);
    let count = u32_at(&header, 80);
    let entry_len = u32_at(&header, 84) as usize;
    if count > MAX_ENTRIES || entry_len < 128 || !entry_len.is_multiple_of(8) || entry_len > 1024 {
        return Err(GptError::Invalid("entry layout"));
    }
    let mut entries = vec![0u8; count as usize * entry_len];
    read_at(
        &mut entries,
        entries_lba
            .checked_mul(sector)
            .ok_or(GptError::Invalid("entry position"))?,
    )?;
    if crc32fast::hash(&entries) != u32_at(&header, 88) {
        return Err(GptError::Invalid("entries checksum"));
    }
    let mut out = Vec::new();
    for (i, e) in entries.chunks_exact(entry_len).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if last < first {
            return Err(GptError::Invalid("partition bounds"));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(GptPartition {
            number: i as u32 + 1,
            name: String::from_utf16_lossy(&units),
            start: first * sector,
            len: (last - first + 1) * sector,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid GPT with the given (first LBA, last LBA, name) entries, 512-byte sectors.
    pub fn make_gpt(parts: &[(u64, u64, &str)]) -> Vec<u8> {
        let mut disk = vec![0u8; 34 * 512];
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
        let h = &mut disk[512..1024];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&entries).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        disk[1024..1024 + entries.len()].copy_from_slice(&entries);
        disk
    }

    #[test]
    fn reads_names_and_extents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        std::fs::write(
            &path,
            make_gpt(&[(2048, 4095, "root"), (4096, 6143, "lazarus-flag")]),
        )
        .unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let parts = read_gpt(&f, 512).unwrap();
        assert_eq!(
            parts,
            vec![
                GptPartition {
                    number: 1,
                    name: "root".into(),
                    start: 2048 * 512,
                    len: 2048 * 512
                },
                GptPartition {
                    number: 2,
                    name: "lazarus-flag".into(),
                    start: 4096 * 512,
                    len: 2048 * 512
                },
            ]
        );
    }

    #[test]
    fn a_damaged_or_missing_table_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let good = make_gpt(&[(2048, 4095, "root")]);
        for (at, what) in [
            (512, "signature"),
            (512 + 20, "header"),
            (1024 + 60, "entries"),
        ] {
            let mut bad = good.clone();
            bad[at] ^= 0xff;
            std::fs::write(&path, &bad).unwrap();
            let f = std::fs::File::open(&path).unwrap();
            assert!(read_gpt(&f, 512).is_err(), "{what} damage accepted");
        }
        std::fs::write(&path, vec![0u8; 34 * 512]).unwrap();
        assert!(matches!(
            read_gpt(&std::fs::File::open(&path).unwrap(), 512),
            Err(GptError::NoHeader)
        ));
    }
}
