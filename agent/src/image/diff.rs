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

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Condvar, Mutex};

use lazarus_node::index::{Chunk, ChunkIndex};

use super::{
    buf::Pool, fill, lock, write_runs, AlignedBuf, Checkpoints, CopyReport, CopySpec, ImageError,
    Progress, Settled, Target, HEADER_LEN,
};

/// Where a differential copy reads the image's chunks from.
pub enum ChunkSource<'a> {
    /// A raw image: any chunk, in any order (`pread`), so only differing chunks cross the network.
    File(&'a File),
    /// The same, read on a thread the copy can abandon (a stalled NFS server; an abort).
    Watched(super::WatchedFile<'a>),
    /// A packed image (`lazarus image pack`): each chunk decoded alone from its own zstd frame,
    /// whose place the packed index gives; any chunk, in any order, and only its compressed
    /// bytes cross the network.
    Packed {
        file: super::WatchedFile<'a>,
        index: &'a ChunkIndex,
        /// The compressed frame being decoded, its buffer kept from chunk to chunk.
        frame: Vec<u8>,
    },
    /// A stream (a decompressed zstd image): chunks in increasing order, skipping forward by
    /// reading and dropping.
    Stream {
        reader: Box<dyn Read + Send + 'a>,
        pos: u64,
    },
}

impl ChunkSource<'_> {
    /// Reads the chunk at `offset` into `buf`; returns the bytes fetched from the source for it
    /// (0 for a stream, whose [`super::WatchedRead`] counts them itself).
    fn read_chunk(&mut self, buf: &mut [u8], offset: u64) -> Result<u64, ImageError> {
        match self {
            ChunkSource::File(f) => {
                f.read_exact_at(buf, offset).map_err(ImageError::Read)?;
                Ok(buf.len() as u64)
            }
            ChunkSource::Watched(w) => {
                w.read_at(buf, offset).map_err(super::stall::image_error)?;
                Ok(buf.len() as u64)
            }
            ChunkSource::Packed { file, index, frame } => {
                let i = index.chunk_at(offset);
                let (at, len) = index.frame(i).ok_or_else(|| {
                    ImageError::Read(io::Error::other("the index has no frame table"))
                })?;
                frame.resize(len as usize, 0);
                file.read_at(frame, at).map_err(super::stall::image_error)?;
                let mut decoder = lazarus_node::zstd::ZstdFrames::new(&frame[..]);
                let got = fill(&mut decoder, buf).map_err(ImageError::Read)?;
                let mut probe = [0u8; 1];
                let extra = fill(&mut decoder, &mut probe).map_err(ImageError::Read)?;
                if got < buf.len() || extra > 0 || index.range(i).start != offset {
                    let r = index.range(i);
                    return Err(ImageError::ChunkMismatch {
                        chunk: i,
                        start: r.start,
                        end: r.end,
                    });
                }
                Ok(len as u64)
            }
            ChunkSource::Stream { reader, pos } => {
                if offset < *pos {
                    return Err(ImageError::Read(io::Error::other(
                        "a stream source cannot go back",
                    )));
                }
                let skip = offset - *pos;
                let skipped = io::copy(&mut reader.by_ref().take(skip), &mut io::sink())
                    .map_err(super::stall::image_error)?;
                let got = fill(reader, buf).map_err(super::stall::image_error)?;
                *pos += skipped + got as u64;
                if skipped < skip || got < buf.len() {
                    return Err(ImageError::TooShort {
                        got: *pos,
                        expected: offset + buf.len() as u64,
                    });
                }
                // The stream's WatchedRead counts what it fetches (compressed bytes).
                Ok(0)
            }
        }
    }

    fn random_access(&self) -> bool {
        matches!(
            self,
            ChunkSource::File(_) | ChunkSource::Watched(_) | ChunkSource::Packed { .. }
        )
    }
}

/// Writing threads, and hashing threads of a check: one per core, at most 8 (each holds a
/// chunk buffer or two).
fn threads() -> usize {
    super::cores(8)
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
    super::fits(target, spec)?;
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

/// Chunks waiting to be fetched and written, in the order pushed; closed once no more come.
struct Queue {
    state: Mutex<(VecDeque<usize>, bool)>,
    ready: Condvar,
}

impl Queue {
    fn new() -> Self {
        Self {
            state: Mutex::new((VecDeque::new(), false)),
            ready: Condvar::new(),
        }
    }

    fn push(&self, i: usize) {
        lock(&self.state).0.push_back(i);
        self.ready.notify_one();
    }

    fn close(&self) {
        lock(&self.state).1 = true;
        self.ready.notify_all();
    }

    /// The next chunk; `None` once closed and empty, or when `stop` says so.
    fn pop(&self, stop: &dyn Fn() -> bool) -> Option<usize> {
        let mut st = lock(&self.state);
        loop {
            if stop() {
                return None;
            }
            if let Some(i) = st.0.pop_front() {
                return Some(i);
            }
            if st.1 {
                return None;
            }
            st = match self
                .ready
                .wait_timeout(st, std::time::Duration::from_millis(100))
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }
}

/// What the checking and writing threads share.
struct Run<'s, 'a> {
    target: &'s Target,
    spec: &'s CopySpec,
    idx: &'s ChunkIndex,
    progress: &'s Progress,
    checkpoints: Option<&'s Checkpoints<'a>>,
    header_len: usize,
    /// The verified first MiB, from the disk (chunk 0 matched) or the source.
    header: Mutex<Option<Vec<u8>>>,
    settled: Settled,
    queue: Queue,
    failed: AtomicBool,
    written: AtomicU64,
}

impl Run<'_, '_> {
    fn stop(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Reads target chunk `i` and compares it with the index (see [`Run::judge`]).
    fn check(&self, i: usize, buf: &mut AlignedBuf) -> Result<Checked, ImageError> {
        let data = read_target(self.target, self.idx, i, buf)?;
        self.progress
            .checked
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        self.judge(i, data)
    }

    /// Compares target chunk `i`, read as `data`, with the index; a matching chunk is settled
    /// (and chunk 0 gives the header back). A chunk touching kept ranges is left to the caller.
    fn judge(&self, i: usize, data: &[u8]) -> Result<Checked, ImageError> {
        let r = self.idx.range(i);
        if self.spec.keep.outside(r.clone()) != [r.clone()] {
            return Ok(Checked::Kept);
        }
        if !self.idx.matches(i, data) {
            return Ok(Checked::Differs);
        }
        self.progress
            .done
            .fetch_add(r.end - r.start, Ordering::Relaxed);
        if i == 0 {
            *lock(&self.header) = Some(data[..self.header_len].to_vec());
        }
        self.settled
            .mark(i, self.idx, self.target, self.checkpoints, self.progress)?;
        Ok(Checked::Matches)
    }

    /// Checks the chunks `to_check`, in order: this thread reads them back to back, as `dd`
    /// does, and [`threads`] threads at the lowest CPU priority hash them, so a finished read
    /// gets a core at once and the disk never waits for the CPU. (Measured here on 2 GiB: as
    /// fast as `dd iflag=direct` reads it, about 1.5 s, against 1.8-2.2 s with hashers at the
    /// reader's priority or with every thread reading and hashing in turn; concurrent reads at
    /// scattered offsets were also slower than one stream.) With `queue_bad`, chunks that
    /// differ (or touch kept ranges) go straight to the write queue.
    fn check_all(
        &self,
        to_check: &[usize],
        queue_bad: bool,
        bad: &Mutex<Vec<usize>>,
        kept: &Mutex<Vec<usize>>,
    ) -> Result<(), ImageError> {
        let hashers = threads();
        let chunk = self.idx.chunk_size() as usize;
        // Two buffers per hasher and two for the reader, but at most 64 MiB (the rescue system
        // lives in RAM): 6 on 2 cores at 4 MiB chunks.
        let buffers = (2 * hashers + 2).min((64 << 20) / chunk).max(3);
        let pool = Pool::new(buffers, chunk);
        let (to_hash, hash_rx) = sync_channel::<(usize, super::buf::Chunk)>(buffers);
        // The hashers own the receiving end: were they all to end early (a panic), the reader's
        // next send fails instead of waiting for ever.
        let hash_rx = std::sync::Arc::new(Mutex::new(hash_rx));
        std::thread::scope(|s| {
            let hashing = on_threads(s, self, hashers, move || {
                super::set_lowest_priority();
                let mut result = Ok(());
                // After an error keep draining, so the reader is never blocked on a full queue.
                loop {
                    let next = lock(&hash_rx).recv();
                    let Ok((i, chunk)) = next else { return result };
                    if result.is_err() || self.stop() {
                        continue;
                    }
                    result = self.judge(i, chunk.data()).map(|checked| match checked {
                        Checked::Matches => {}
                        _ if queue_bad => self.queue.push(i),
                        Checked::Differs => lock(bad).push(i),
                        Checked::Kept => lock(kept).push(i),
                    });
                    if result.is_err() {
                        self.failed.store(true, Ordering::Relaxed);
                    }
                }
            });
            let read = (|| {
                for &i in to_check {
                    if self.stop() {
                        return Ok(());
                    }
                    if self.progress.aborted() {
                        return Err(ImageError::Aborted);
                    }
                    let Some(mut buf) = pool.take() else {
                        return Ok(());
                    };
                    let len = read_target(self.target, self.idx, i, &mut buf)?.len();
                    self.progress
                        .checked
                        .fetch_add(len as u64, Ordering::Relaxed);
                    let chunk = pool.chunk(buf, self.idx.range(i).start, len);
                    if to_hash.send((i, chunk)).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            })();
            drop(to_hash);
            if read.is_err() {
                self.failed.store(true, Ordering::Relaxed);
            }
            let hashed = joined(hashing);
            read.and(hashed)
        })
    }

    /// Fetches, checks and writes queued chunks until the queue is closed and empty.
    fn write_worker(&self, source: &Mutex<&mut ChunkSource<'_>>) -> Result<(), ImageError> {
        let idx = self.idx;
        let mut buf = AlignedBuf::new(idx.chunk_size() as usize);
        loop {
            if self.progress.aborted() {
                return Err(ImageError::Aborted);
            }
            // Taken and read under the source's lock: a stream source only skips forward.
            let i = {
                let mut src = lock(source);
                let Some(i) = self.queue.pop(&|| self.stop() || self.progress.aborted()) else {
                    if self.progress.aborted() {
                        return Err(ImageError::Aborted);
                    }
                    return Ok(());
                };
                if let Chunk::Data(_) = idx.chunks()[i] {
                    let r = idx.range(i);
                    let len = (r.end - r.start) as usize;
                    let got = src.read_chunk(&mut buf.as_mut_slice()[..len], r.start)?;
                    self.progress.fetched.fetch_add(got, Ordering::Relaxed);
                }
                i
            };
            let r = idx.range(i);
            let len = (r.end - r.start) as usize;
            let n = match idx.chunks()[i] {
                Chunk::Hole => {
                    if i == 0 {
                        *lock(&self.header) = Some(vec![0; self.header_len]);
                    }
                    write_hole(self.target, self.spec, r.clone(), i == 0, self.header_len)?
                }
                Chunk::Data(_) => {
                    let data = &buf.as_slice()[..len];
                    if !idx.matches(i, data) {
                        return Err(mismatch(idx, i));
                    }
                    let skip = if i == 0 {
                        *lock(&self.header) = Some(data[..self.header_len].to_vec());
                        self.header_len
                    } else {
                        0
                    };
                    write_runs(
                        self.target,
                        &data[skip..],
                        r.start + skip as u64,
                        0,
                        &self.spec.keep,
                        false,
                    )?
                }
            };
            self.written.fetch_add(n, Ordering::Relaxed);
            self.progress.written.fetch_add(n, Ordering::Relaxed);
            self.progress
                .done
                .fetch_add(r.end - r.start, Ordering::Relaxed);
            self.settled
                .mark(i, idx, self.target, self.checkpoints, self.progress)?;
        }
    }

    /// Every chunk matched on the target or was written from verified bytes: else the first
    /// that was not, as a mismatch (never expected; the last guard before the header goes back).
    fn all_settled(&self) -> Result<(), ImageError> {
        match self.settled.first_unsettled() {
            None => Ok(()),
            Some(i) => Err(mismatch(self.idx, i)),
        }
    }

    fn zero_header(&self, zeroed: &AtomicBool) -> Result<(), ImageError> {
        self.spec
            .keep
            .write_zeroes(self.target, 0..self.header_len as u64)
            .and_then(|()| self.target.sync())
            .map_err(ImageError::Sync)?;
        zeroed.store(true, Ordering::Relaxed);
        Ok(())
    }
}

/// Closes the write queue when dropped, also while a panic unwinds (then the run has failed).
struct CloseQueue<'r, 's, 'a>(&'r Run<'s, 'a>);

impl Drop for CloseQueue<'_, '_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::Relaxed);
        }
        self.0.queue.close();
    }
}

/// What a check found.
enum Checked {
    Matches,
    Differs,
    /// Touches kept ranges: compared against the image outside them, later.
    Kept,
}

/// Runs `n` threads of `work`; the first error wins (and stops the others through `run`).
fn on_threads<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    run: &'s Run<'_, '_>,
    n: usize,
    work: impl Fn() -> Result<(), ImageError> + Send + Sync + 's,
) -> Vec<std::thread::ScopedJoinHandle<'s, Result<(), ImageError>>> {
    let work = std::sync::Arc::new(work);
    (0..n)
        .map(|_| {
            let work = work.clone();
            s.spawn(move || {
                let r = work();
                if r.is_err() {
                    run.failed.store(true, Ordering::Relaxed);
                }
                r
            })
        })
        .collect()
}

fn joined(
    handles: Vec<std::thread::ScopedJoinHandle<'_, Result<(), ImageError>>>,
) -> Result<(), ImageError> {
    let mut first = Ok(());
    for h in handles {
        let r = h
            .join()
            .unwrap_or_else(|_| Err(ImageError::Read(io::Error::other("a copy thread panicked"))));
        if first.is_ok() {
            first = r;
        }
    }
    first
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
    let run = Run {
        target,
        spec,
        idx,
        progress,
        checkpoints,
        header_len: HEADER_LEN.min(spec.size) as usize,
        header: Mutex::new(None),
        settled: Settled::new(idx.len(), 1),
        queue: Queue::new(),
        failed: AtomicBool::new(false),
        written: AtomicU64::new(0),
    };
    let to_check: Vec<usize> = (0..idx.len())
        .filter(|&i| idx.range(i).start < check_below)
        .collect();
    let blind: Vec<usize> = (0..idx.len())
        .filter(|&i| idx.range(i).start >= check_below)
        .collect();
    let (bad, kept) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let source = Mutex::new(source);

    if !blind.is_empty() && lock(&source).random_access() {
        // A resume: chunks past the checkpoint are written whatever the check finds, so the
        // header goes now and checking the prefix overlaps with writing the rest (reads and
        // hashing beside writes). Chunk 0 is checked first, before its header is zeroed.
        let first = usize::from(to_check.first() == Some(&0));
        if first == 1 {
            let mut buf = AlignedBuf::new(idx.chunk_size() as usize);
            match run.check(0, &mut buf)? {
                Checked::Matches => {}
                _ => run.queue.push(0),
            }
        }
        run.zero_header(zeroed)?;
        for &i in &blind {
            run.queue.push(i);
        }
        std::thread::scope(|s| {
            let writes = on_threads(s, &run, threads(), || run.write_worker(&source));
            let checked = {
                // The writers wait on the queue until it is closed, whatever ends the check.
                let _close = CloseQueue(&run);
                run.check_all(&to_check[first..], true, &bad, &kept)
            };
            if checked.is_err() {
                run.failed.store(true, Ordering::Relaxed);
            }
            let wrote = joined(writes);
            checked.and(wrote)
        })?;
    } else {
        run.check_all(&to_check, false, &bad, &kept)?;
        // Chunks holding kept ranges: fetched (when the source can seek) and compared outside
        // them.
        let mut bad = bad.into_inner().unwrap_or_else(|p| p.into_inner());
        for i in kept.into_inner().unwrap_or_else(|p| p.into_inner()) {
            if progress.aborted() {
                return Err(ImageError::Aborted);
            }
            let mut src = lock(&source);
            if !src.random_access() {
                bad.push(i);
                continue;
            }
            let r = idx.range(i);
            let len = (r.end - r.start) as usize;
            let mut image = AlignedBuf::new(idx.chunk_size() as usize);
            let got = src.read_chunk(&mut image.as_mut_slice()[..len], r.start)?;
            progress.fetched.fetch_add(got, Ordering::Relaxed);
            let image = &image.as_slice()[..len];
            if !idx.matches(i, image) {
                return Err(mismatch(idx, i));
            }
            let mut disk = AlignedBuf::new(idx.chunk_size() as usize);
            let disk = read_target(target, idx, i, &mut disk)?;
            if equal_outside_kept(spec, r.start, image, disk) {
                progress.done.fetch_add(r.end - r.start, Ordering::Relaxed);
                if i == 0 {
                    *lock(&run.header) = Some(image[..run.header_len].to_vec());
                }
                run.settled.mark(i, idx, target, checkpoints, progress)?;
            } else {
                bad.push(i);
            }
        }
        bad.extend(&blind);
        bad.sort_unstable();
        bad.dedup();
        if bad.is_empty() {
            run.all_settled()?;
            return Ok(CopyReport {
                bytes: spec.size,
                written: 0,
                sparse: false,
            });
        }
        // Something changes: the header goes first (zeroed, flushed), and comes back last.
        run.zero_header(zeroed)?;
        for i in bad {
            run.queue.push(i);
        }
        run.queue.close();
        std::thread::scope(|s| {
            joined(on_threads(s, &run, threads(), || run.write_worker(&source)))
        })?;
    }

    run.all_settled()?;
    target.sync().map_err(ImageError::Sync)?;
    let header = lock(&run.header).take().ok_or_else(|| mismatch(idx, 0))?;
    let n = write_runs(target, &header, 0, 0, &spec.keep, false)?;
    target.sync().map_err(ImageError::Sync)?;
    progress.written.fetch_add(n, Ordering::Relaxed);
    Ok(CopyReport {
        bytes: spec.size,
        written: run.written.into_inner() + n,
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
