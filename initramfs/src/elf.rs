//! Just enough ELF64 reading: is a program static, and a kernel module's `.modinfo`.

/// Why a file is not what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not a 64-bit little-endian ELF file")]
    NotElf,
    #[error("truncated ELF file")]
    Truncated,
}

fn u16_at(b: &[u8], o: usize) -> Result<u16, ElfError> {
    b.get(o..o + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or(ElfError::Truncated)
}

fn u32_at(b: &[u8], o: usize) -> Result<u32, ElfError> {
    b.get(o..o + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or(ElfError::Truncated)
}

fn u64_at(b: &[u8], o: usize) -> Result<u64, ElfError> {
    let s = b.get(o..o + 8).ok_or(ElfError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

fn check_header(b: &[u8]) -> Result<(), ElfError> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err(ElfError::NotElf);
    }
    Ok(())
}

/// True when the program has no interpreter (`PT_INTERP`) and no dynamic section, i.e. it runs
/// as `/init` with nothing else in the initramfs.
pub fn is_static_executable(b: &[u8]) -> Result<bool, ElfError> {
    check_header(b)?;
    let e_type = u16_at(b, 16)?;
    let phoff = u64_at(b, 32)? as usize;
    let phentsize = usize::from(u16_at(b, 54)?);
    let phnum = usize::from(u16_at(b, 56)?);
    if e_type != 2 && e_type != 3 {
        return Ok(false);
    }
    for i in 0..phnum {
        let p_type = u32_at(b, phoff + i * phentsize)?;
        // PT_DYNAMIC (2) or PT_INTERP (3): needs a loader or shared libraries.
        if p_type == 2 || p_type == 3 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The `key=value` strings of a kernel module's `.modinfo` section.
pub fn modinfo(b: &[u8]) -> Result<Vec<(String, String)>, ElfError> {
    check_header(b)?;
    let shoff = u64_at(b, 40)? as usize;
    let shentsize = usize::from(u16_at(b, 58)?);
    let shnum = usize::from(u16_at(b, 60)?);
    let shstrndx = usize::from(u16_at(b, 62)?);
    let section = |i: usize| -> Result<(u32, usize, usize), ElfError> {
        let h = shoff + i * shentsize;
        Ok((
            u32_at(b, h)?,
            u64_at(b, h + 24)? as usize,
            u64_at(b, h + 32)? as usize,
        ))
    };
    let (_, str_off, str_len) = section(shstrndx)?;
    let names = b
        .get(str_off..str_off + str_len)
        .ok_or(ElfError::Truncated)?;
    for i in 0..shnum {
        let (name, off, len) = section(i)?;
        let name = names
            .get(name as usize..)
            .and_then(|n| n.split(|&c| c == 0).next())
            .unwrap_or_default();
        if name == b".modinfo" {
            let data = b.get(off..off + len).ok_or(ElfError::Truncated)?;
            return Ok(data
                .split(|&c| c == 0)
                .filter_map(|kv| {
                    let kv = std::str::from_utf8(kv).ok()?;
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_string(), v.to_string()))
                })
                .collect());
        }
    }
    Ok(Vec::new())
}
