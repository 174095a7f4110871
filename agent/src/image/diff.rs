//! Differential copies with a chunk index: read the target's chunks, compare each with the
//! index, fetch and write only the chunks that differ.
//!
//! Rules this module keeps (with `mod.rs`'s):
//!
//! - Checking reads the target only; nothing is written while no chunk differs, so an intact
//!   disk stays as it is, header included.
//! - Before the first write the target's first MiB is zeroed and flushed; it is written last,
//!   from bytes verified against the index (read back from the disk when chunk 0 matched, or
//!   fetched), after a flush of everything else. On any error it is zeroed again.
//! - Every fetched chunk is checked against the index before a byte of it is written.
//! - `check_below` (a resume's checkpoint) only chooses which chunks are read back before being
//!   written: chunks at or past it are written without a look. It never lets a chunk go
//!   unchecked: every chunk either matched on the target in this run or was written from
//!   verified bytes, so a completed run leaves every chunk of the index on the disk.
//! - Chunks touching kept ranges are compared outside those ranges only (the flag record's
//!   slots differ from the image by design).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use lazarus_node::index::{Chunk, ChunkIndex};

use super::{
    fill, lock, write_runs, AlignedBuf, Checkpoints, CopyReport, CopySpec, ImageError, Progress,
    Settled, Target, HEADER_LEN,
};

/// Where a differential copy reads the image's chunks from.
pub enum ChunkSource<'a> {
    /// A raw image: any chunk, in any order (`pread`), so only differing chunks cross the network.
    File(&'a File),
    /// A stream (a decompressed zstd image): chunks in increasing order, skipping forward by
    /// reading and dropping.
    Stream {
        reader: Box<dyn Read + Send + 'a>,
        pos: u64,
    },
}

impl ChunkSource<'_> {
    fn read_chunk(&mut self, buf: &mut [u8], offset: u64) -> Result<u64, ImageError> {
        match self {
            ChunkSource::File(f) => {
                f.read_exact_at(buf, offset).map_err(ImageError::Read)?;
                Ok(buf.len() as u64)
            }
            ChunkSource::Stream { reader, pos } => {
                if offset < *pos {
                    return Err(ImageError::Read(io::Error::other(
                        "a stream source cannot go back",
                    )));
                }
                let skip = offset - *pos;
                let skipped = io::copy(&mut reader.by_ref().take(skip), &mut io::sink())
                    .map_err(ImageError::Read)?;
                let got = fill(reader, buf).map_err(ImageError::Read)?;
                *pos += skipped + got as u64;
                if skipped < skip || got < buf.len() {
                    return Err(ImageError::TooShort {
                        got: *pos,
                        expected: offset + buf.len() as u64,
                    });
                }
                Ok(skipped + got as u64)
            }
        }
    }

    fn random_access(&self) -> bool {
        matches!(self, ChunkSource::File(_))
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// Reads chunk `i` of the target into `buf`; returns the slice.
fn read_target<'b>(
    target: &Target,
    idx: &ChunkIndex,
    i: usize,
    buf: &'b mut AlignedBuf,
) -> Result<&'b [u8], ImageError> {
    let r = idx.range(i);
    let data = &mut buf.as_mut_slice()[..(r.end - r.start) as usize];
    target
        .read_at(data, r.start)
        .map_err(|source| ImageError::ReadTarget {
            offset: r.start,
            source,
        })?;
    Ok(data)
}

/// Whether the bytes outside kept ranges are equal.
fn equal_outside_kept(spec: &CopySpec, offset: u64, a: &[u8], b: &[u8]) -> bool {
    spec.keep
        .outside(offset..offset + a.len() as u64)
        .iter()
        .all(|r| {
            let (s, e) = ((r.start - offset) as usize, (r.end - offset) as usize);
            a[s..e] == b[s..e]
        })
}

/// Reads up to `max` data chunks of the target spread evenly over the image (chunks touching
/// kept ranges left out) and returns (matching, sampled). For `auto` mode's choice.
pub fn sample(
    target: &Target,
    idx: &ChunkIndex,
    spec: &CopySpec,
    max: usize,
) -> Result<(usize, usize), ImageError> {
    let data: Vec<usize> = (0..idx.len())
        .filter(|&i| matches!(idx.chunks()[i], Chunk::Data(_)))
        .filter(|&i| spec.keep.outside(idx.range(i)).len() == 1)
        .filter(|&i| spec.keep.outside(idx.range(i))[0] == idx.range(i))
        .collect();
    let step = data.len().div_ceil(max.max(1)).max(1);
    let mut buf = AlignedBuf::new(idx.chunk_size() as usize);
    let (mut matching, mut sampled) = (0, 0);
    for &i in data.iter().step_by(step) {
        sampled += 1;
        if idx.matches(i, read_target(target, idx, i, &mut buf)?) {
            matching += 1;
        }
    }
    Ok((matching, sampled))
}

/// Rewrites the chunks of `target` that differ from `idx` (see the module doc). `check_below`:
/// chunks starting at or past it are written without being read first (a resume's checkpoint;
/// the image size checks every chunk).
pub fn write_differential(
    mut source: ChunkSource<'_>,
    target: &Target,
    spec: &CopySpec,
    idx: &ChunkIndex,
    check_below: u64,
    progress: &Progress,
    checkpoints: Option<&Checkpoints<'_>>,
) -> Result<CopyReport, ImageError> {
    if target.len() < spec.size {
        return Err(ImageError::TargetTooSmall {
            target: target.len(),
            image: spec.size,
        });
    }
    if idx.image_size() != spec.size {
        return Err(ImageError::TooShort {
            got: idx.image_size(),
            expected: spec.size,
        });
    }
    progress.reset(spec.size);
    let zeroed = AtomicBool::new(false);
    let result = differential(
        &mut source,
        target,
        spec,
        idx,
        check_below,
        progress,
        checkpoints,
        &zeroed,
    );
    if result.is_err() {
        let header_len = HEADER_LEN.min(spec.size);
        if let Err(z) = spec
            .keep
            .write_zeroes(target, 0..header_len)
            .and_then(|()| target.sync())
        {
            log::error!(
                "zeroing the first MiB of {} after a failed copy: {z}",
                target.path().display()
            );
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn differential(
    source: &mut ChunkSource<'_>,
    target: &Target,
    spec: &CopySpec,
    idx: &ChunkIndex,
    check_below: u64,
    progress: &Progress,
    checkpoints: Option<&Checkpoints<'_>>,
    zeroed: &AtomicBool,
) -> Result<CopyReport, ImageError> {
    let header_len = HEADER_LEN.min(spec.size) as usize;
    let chunk_len = idx.chunk_size() as usize;
    let to_check: Vec<usize> = (0..idx.len())
        .filter(|&i| idx.range(i).start < check_below)
        .collect();
    // The verified first MiB, from the disk (chunk 0 matched) or the source.
    let header: Mutex<Option<Vec<u8>>> = Mutex::new(None);
    let bad = Mutex::new(Vec::new());
    let kept_chunks = Mutex::new(Vec::new());

    // Check: every core reads and compares target chunks.
    let next = AtomicUsize::new(0);
    let results: Vec<Result<(), ImageError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads())
            .map(|_| {
                s.spawn(|| -> Result<(), ImageError> {
                    let mut buf = AlignedBuf::new(chunk_len);
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&i) = to_check.get(n) else {
                            return Ok(());
                        };
                        if progress.aborted() {
                            return Err(ImageError::Aborted);
                        }
                        let r = idx.range(i);
                        let touches_kept = spec.keep.outside(r.clone()) != [r.clone()];
                        let data = read_target(target, idx, i, &mut buf)?;
                        progress
                            .checked
                            .fetch_add(r.end - r.start, Ordering::Relaxed);
                        if touches_kept {
                            lock(&kept_chunks).push(i);
                        } else if idx.matches(i, data) {
                            progress.done.fetch_add(r.end - r.start, Ordering::Relaxed);
                            if i == 0 {
                                *lock(&header) = Some(data[..header_len].to_vec());
                            }
                        } else {
                            lock(&bad).push(i);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(ImageError::Read(io::Error::other(
                        "checker thread panicked",
                    )))
                })
            })
            .collect()
    });
    results.into_iter().collect::<Result<(), ImageError>>()?;

    // Chunks holding kept ranges: fetched (when the source can seek) and compared outside them.
    let mut bad = bad.into_inner().unwrap_or_else(|p| p.into_inner());
    for i in kept_chunks.into_inner().unwrap_or_else(|p| p.into_inner()) {
        if !source.random_access() {
            bad.push(i);
            continue;
        }
        let r = idx.range(i);
        let len = (r.end - r.start) as usize;
        let mut image = AlignedBuf::new(chunk_len);
        let got = source.read_chunk(&mut image.as_mut_slice()[..len], r.start)?;
        progress.fetched.fetch_add(got, Ordering::Relaxed);
        let image = &image.as_slice()[..len];
        if !idx.matches(i, image) {
            return Err(mismatch(idx, i));
        }
        let mut disk = AlignedBuf::new(chunk_len);
        let disk = read_target(target, idx, i, &mut disk)?;
        if equal_outside_kept(spec, r.start, image, disk) {
            progress.done.fetch_add(r.end - r.start, Ordering::Relaxed);
            if i == 0 {
                *lock(&header) = Some(image[..header_len].to_vec());
            }
        } else {
            bad.push(i);
        }
    }
    bad.extend((0..idx.len()).filter(|&i| idx.range(i).start >= check_below));
    bad.sort_unstable();
    bad.dedup();
    if bad.is_empty() {
        return Ok(CopyReport {
            bytes: spec.size,
            written: 0,
            sparse: false,
        });
    }

    // Something changes: the header goes first (zeroed, flushed), and comes back last.
    spec.keep
        .write_zeroes(target, 0..header_len as u64)
        .and_then(|()| target.sync())
        .map_err(ImageError::Sync)?;
    zeroed.store(true, Ordering::Relaxed);
    let written = AtomicU64::new(0);
    // A chunk not rewritten is settled already; checkpoints follow the rewritten ones.
    let settled = Settled::new(idx.len(), 1);
    {
        let mut is_bad = vec![false; idx.len()];
        for &i in &bad {
            is_bad[i] = true;
        }
        for (i, b) in is_bad.iter().enumerate() {
            if !b {
                settled.mark(i, idx, target, None, progress)?;
            }
        }
    }
    let source = Mutex::new((source, 0usize));
    let failed = AtomicBool::new(false);
    let results: Vec<Result<(), ImageError>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads())
            .map(|_| {
                s.spawn(|| -> Result<(), ImageError> {
                    let mut buf = AlignedBuf::new(chunk_len);
                    loop {
                        if failed.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                        if progress.aborted() {
                            return Err(ImageError::Aborted);
                        }
                        // Chunks are taken in order under the source's lock, so a stream
                        // source only ever skips forward.
                        let i = {
                            let mut src = lock(&source);
                            let Some(&i) = bad.get(src.1) else {
                                return Ok(());
                            };
                            src.1 += 1;
                            if let Chunk::Data(_) = idx.chunks()[i] {
                                let r = idx.range(i);
                                let len = (r.end - r.start) as usize;
                                let got =
                                    src.0.read_chunk(&mut buf.as_mut_slice()[..len], r.start)?;
                                progress.fetched.fetch_add(got, Ordering::Relaxed);
                            }
                            i
                        };
                        let r = idx.range(i);
                        let len = (r.end - r.start) as usize;
                        let n = match idx.chunks()[i] {
                            Chunk::Hole => write_hole(target, spec, r.clone(), i == 0, header_len)?,
                            Chunk::Data(_) => {
                                let data = &buf.as_slice()[..len];
                                if !idx.matches(i, data) {
                                    return Err(mismatch(idx, i));
                                }
                                let skip = if i == 0 {
                                    *lock(&header) = Some(data[..header_len].to_vec());
                                    header_len
                                } else {
                                    0
                                };
                                write_runs(
                                    target,
                                    &data[skip..],
                                    r.start + skip as u64,
                                    0,
                                    &spec.keep,
                                )?
                            }
                        };
                        if i == 0 && idx.chunks()[0] == Chunk::Hole {
                            *lock(&header) = Some(vec![0; header_len]);
                        }
                        written.fetch_add(n, Ordering::Relaxed);
                        progress.written.fetch_add(n, Ordering::Relaxed);
                        progress.done.fetch_add(r.end - r.start, Ordering::Relaxed);
                        settled.mark(i, idx, target, checkpoints, progress)?;
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                let r = w.join().unwrap_or_else(|_| {
                    Err(ImageError::Read(io::Error::other("writer thread panicked")))
                });
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            })
            .collect()
    });
    results.into_iter().collect::<Result<(), ImageError>>()?;
    target.sync().map_err(ImageError::Sync)?;
    let header = lock(&header).take().ok_or_else(|| mismatch(idx, 0))?;
    let n = write_runs(target, &header, 0, 0, &spec.keep)?;
    target.sync().map_err(ImageError::Sync)?;
    progress.written.fetch_add(n, Ordering::Relaxed);
    Ok(CopyReport {
        bytes: spec.size,
        written: written.into_inner() + n,
        sparse: false,
    })
}

/// Makes a hole chunk read zero: punched where the target can, else written. The header part
/// of chunk 0 is left to the end (it is zero already).
fn write_hole(
    target: &Target,
    spec: &CopySpec,
    r: std::ops::Range<u64>,
    first: bool,
    header_len: usize,
) -> Result<u64, ImageError> {
    let start = if first { header_len as u64 } else { r.start };
    let a = super::ALIGN as u64;
    let aligned = start.div_ceil(a) * a..r.end / a * a;
    if aligned.start < aligned.end && spec.keep.punch(target, aligned.clone()) {
        // The unaligned edges (an image tail) are written.
        let mut n = 0;
        for edge in [start..aligned.start, aligned.end..r.end] {
            if edge.start < edge.end {
                spec.keep
                    .write_zeroes(target, edge.clone())
                    .map_err(|source| ImageError::Write {
                        offset: edge.start,
                        source,
                    })?;
                n += edge.end - edge.start;
            }
        }
        return Ok(n);
    }
    spec.keep
        .write_zeroes(target, start..r.end)
        .map_err(|source| ImageError::Write {
            offset: start,
            source,
        })?;
    Ok(r.end - start)
}

fn mismatch(idx: &ChunkIndex, i: usize) -> ImageError {
    let r = idx.range(i);
    ImageError::ChunkMismatch {
        chunk: i,
        start: r.start,
        end: r.end,
    }
}
