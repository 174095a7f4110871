//! The copy engine: streams an image onto a disk at device speed, verified.
//!
//! Pipeline (one process, a few threads, bounded queues, recycled page-aligned buffers):
//!
//! ```text
//! reader:  source → (zstd) → 4 MiB chunks ─┬─► hashers: SHA-256 (see below)
//!                                          └─► writers: non-zero runs → target (O_DIRECT)
//! ```
//!
//! A whole-image digest has one hasher, in order; a block map one per core, each seeing every
//! chunk in order and hashing its share of the ranges; a chunk index one per core, each taking
//! whole chunks in any order.
//!
//! Rules this module must keep, whatever the input:
//!
//! - The first MiB of the image (partition table, boot code, superblocks) is held back in memory
//!   and written only after the whole stream's SHA-256 matched; on any failure the first MiB of
//!   the target is zeroed, so a half-written disk never looks bootable.
//! - A source shorter or longer than the declared size is an error, never success.
//! - All-zero blocks are skipped only when the target range was first made to read back zeros
//!   (`fallocate(PUNCH_HOLE)`); otherwise every byte is written, since a failed node's disk is not
//!   zeroed.
//! - Progress (bytes read and verified so far) is published for `Status`; an abort request stops
//!   the copy at the next chunk.
//! - Kept ranges ([`CopySpec::keep`]: the flag record's slots when a whole-disk image covers its
//!   own flag partition) are never written, zeroed or punched; their image bytes are verified
//!   like any others.
//! - Holes of the image file are not read ([`Source`]): their bytes are zeros the reading thread
//!   put in the buffer itself, and for them only checks for zeros, and writes of zeros over a
//!   range already punched, are skipped; every digest still covers its bytes.

pub mod bmap;
mod buf;
mod diff;
mod keep;
mod stall;
mod target;
mod verify;

use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex, MutexGuard};

use lazarus_proto::{ImageFormat, Sha256};

pub use bmap::{Bmap, BmapError, MappedRange};
pub(crate) use buf::{AlignedBuf, Pool, ALIGN};
pub use diff::{sample, write_differential, ChunkSource};
pub use keep::Kept;
pub use lazarus_node::index::{Chunk, ChunkIndex};
pub use lazarus_node::zstd::ZstdFrames;
pub use stall::{Piece, Pieces, Reopen, WatchedFile, WatchedRead};
pub use target::Target;
pub use verify::Verification;

/// Bytes held back until the digest matched.
pub const HEADER_LEN: u64 = 1 << 20;
/// Size of one pipeline chunk.
pub const CHUNK_LEN: usize = 4 << 20;
/// Buffers in flight between the threads.
const POOL_BUFFERS: usize = 8;
/// Chunks being written at once.
const WRITERS: usize = 2;
const _: () = assert!(HEADER_LEN as usize <= CHUNK_LEN);
/// Granularity of zero-block detection.
const BLOCK: usize = 4096;
/// Zero gaps shorter than this inside a data run are written rather than split around.
const MIN_HOLE: usize = 256 << 10;

/// What to write and how to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopySpec {
    pub format: ImageFormat,
    /// Logical (uncompressed) size.
    pub size: u64,
    pub verify: Verification,
    /// Target ranges left as they are (see [`Kept`]).
    pub keep: Kept,
}

impl CopySpec {
    /// An image checked by the SHA-256 of all its bytes.
    pub fn whole(format: ImageFormat, size: u64, sha256: Sha256) -> Self {
        Self {
            format,
            size,
            verify: Verification::Whole(sha256),
            keep: Kept::default(),
        }
    }
}

/// Progress and cancellation shared with the status server.
#[derive(Debug, Default)]
pub struct Progress {
    done: AtomicU64,
    total: AtomicU64,
    abort: AtomicBool,
    checked: AtomicU64,
    fetched: AtomicU64,
    written: AtomicU64,
    checkpoint: AtomicU64,
    /// Unix seconds since when the source gave nothing (0: it is flowing).
    stalled_since: AtomicU64,
    /// Stall report and limit in milliseconds (0: the defaults).
    stall_report_ms: AtomicU64,
    stall_limit_ms: AtomicU64,
}

/// A source silent this long is reported as stalled in `Status`.
pub const STALL_REPORT: std::time::Duration = std::time::Duration::from_secs(10);
/// A source silent this long fails the copy (code 513); the next `Recover` resumes it.
pub const STALL_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

impl Progress {
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Asks the running copy to stop at the next chunk.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::Relaxed);
    }

    pub fn aborted(&self) -> bool {
        self.abort.load(Ordering::Relaxed)
    }

    /// Bytes of the target checked, of the image fetched, and written, so far.
    pub fn counters(&self) -> lazarus_proto::CopyCounters {
        lazarus_proto::CopyCounters {
            checked: self.checked.load(Ordering::Relaxed),
            fetched: self.fetched.load(Ordering::Relaxed),
            written: self.written.load(Ordering::Relaxed),
            source_stalled_since: self.stalled_since(),
        }
    }

    /// The last durable checkpoint: every chunk below it was verified on the target or written
    /// from verified bytes, and flushed (0 before the first).
    pub fn checkpoint(&self) -> u64 {
        self.checkpoint.load(Ordering::Relaxed)
    }

    /// When a silent source is reported as stalled, and when it fails the copy.
    pub fn set_stall_times(&self, report: std::time::Duration, limit: std::time::Duration) {
        self.stall_report_ms
            .store(report.as_millis() as u64, Ordering::Relaxed);
        self.stall_limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    pub(crate) fn stall_times(&self) -> (std::time::Duration, std::time::Duration) {
        let ms = |a: &AtomicU64, d: std::time::Duration| match a.load(Ordering::Relaxed) {
            0 => d,
            v => std::time::Duration::from_millis(v),
        };
        (
            ms(&self.stall_report_ms, STALL_REPORT),
            ms(&self.stall_limit_ms, STALL_LIMIT),
        )
    }

    /// Unix seconds since when the source has given nothing, while it is stalled.
    pub fn stalled_since(&self) -> Option<u64> {
        match self.stalled_since.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t),
        }
    }

    pub(crate) fn mark_stalled(&self, waited: std::time::Duration, last_error: Option<&str>) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let since = now.saturating_sub(waited.as_secs()).max(1);
        if self
            .stalled_since
            .compare_exchange(0, since, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            log::warn!(
                "source stalled since {since} (unix seconds; nothing for {} s{}); waiting for it",
                waited.as_secs(),
                last_error.map_or(String::new(), |e| format!(", last error: {e}"))
            );
        }
    }

    pub(crate) fn clear_stall(&self) {
        let was = self.stalled_since.swap(0, Ordering::Relaxed);
        if was != 0 {
            log::info!("source back after a stall since {was}; the copy goes on");
        }
    }

    /// Starts from a checkpoint recorded by an earlier attempt (what a failure reports until
    /// this run records its own).
    pub fn set_checkpoint(&self, at: u64) {
        self.checkpoint.store(at, Ordering::Relaxed);
    }

    fn reset(&self, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
        for c in [&self.checked, &self.fetched, &self.written] {
            c.store(0, Ordering::Relaxed);
        }
    }
}

/// Durable progress records while a copy with an index writes: every `every` bytes of settled
/// chunks the engine flushes the target (`fdatasync`), then calls `record` with the offset below
/// which every chunk is on stable storage and matches the index. The recovery writes that offset
/// to the flag record; a later run uses it only to decide which chunks to read back first
/// (`docs/copy-engine.md`, "Resume").
pub struct Checkpoints<'a> {
    pub every: u64,
    pub record: &'a (dyn Fn(u64) -> io::Result<()> + Sync),
}

/// Settles chunks out of order; reports the contiguous prefix and when to checkpoint.
struct Settled {
    state: Mutex<(Vec<u8>, usize, u64)>,
    needed: u8,
}

impl Settled {
    fn new(chunks: usize, needed: u8) -> Self {
        Self {
            state: Mutex::new((vec![0; chunks], 0, 0)),
            needed,
        }
    }

    /// The first chunk of the unsettled rest, if any.
    fn first_unsettled(&self) -> Option<usize> {
        let st = lock(&self.state);
        (st.1 < st.0.len()).then_some(st.1)
    }

    /// One more event for chunk `i`; when it makes the settled prefix reach `every` bytes past
    /// the last checkpoint, flushes and records.
    fn mark(
        &self,
        i: usize,
        index: &ChunkIndex,
        target: &Target,
        checkpoints: Option<&Checkpoints<'_>>,
        progress: &Progress,
    ) -> Result<(), ImageError> {
        let mut st = lock(&self.state);
        st.0[i] += 1;
        while st.1 < st.0.len() && st.0[st.1] >= self.needed {
            st.1 += 1;
        }
        let upto = if st.1 == st.0.len() {
            index.image_size()
        } else {
            index.range(st.1).start
        };
        if let Some(c) = checkpoints {
            if upto >= st.2 + c.every && upto < index.image_size() {
                target.sync().map_err(ImageError::Sync)?;
                (c.record)(upto).map_err(ImageError::Checkpoint)?;
                progress.checkpoint.store(upto, Ordering::Relaxed);
                st.2 = upto;
            }
        }
        Ok(())
    }
}

/// What a completed copy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyReport {
    /// Logical bytes streamed and verified.
    pub bytes: u64,
    /// Bytes actually written to the target.
    pub written: u64,
    /// Whether zero blocks were skipped (the target was punched to zeros first).
    pub sparse: bool,
}

/// Errors of the copy engine, one per failing step.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("target is {target} bytes, smaller than the {image}-byte image")]
    TargetTooSmall { target: u64, image: u64 },
    #[error("reading the image: {0}")]
    Read(io::Error),
    #[error("image is shorter than declared: {got} of {expected} bytes")]
    TooShort { got: u64, expected: u64 },
    #[error("image is longer than the declared {expected} bytes")]
    TooLong { expected: u64 },
    #[error("image digest mismatch: expected {expected}, got {got}")]
    DigestMismatch { expected: Sha256, got: Sha256 },
    #[error("image bytes {start}..{end} do not match the block map's digest")]
    RangeMismatch { start: u64, end: u64 },
    #[error("image has data at byte {offset}, outside every range of its block map")]
    DataOutsideMap { offset: u64 },
    #[error("writing the target at byte {offset}: {source}")]
    Write { offset: u64, source: io::Error },
    #[error("flushing the target: {0}")]
    Sync(io::Error),
    #[error("copy aborted on request")]
    Aborted,
    #[error("reading the target at byte {offset}: {source}")]
    ReadTarget { offset: u64, source: io::Error },
    #[error("image chunk {chunk} (bytes {start}..{end}) does not match the index")]
    ChunkMismatch { chunk: usize, start: u64, end: u64 },
    #[error("recording a checkpoint: {0}")]
    Checkpoint(io::Error),
    #[error("the image source gave nothing for {secs} s{}; the next Recover resumes the copy", if last.is_empty() { String::new() } else { format!(" (last error: {last})") })]
    SourceStalled { secs: u64, last: String },
}

/// Wraps a raw or zstd source as the logical image stream.
pub fn decoder<'a, R: Read + Send + 'a>(
    format: ImageFormat,
    source: R,
) -> Box<dyn Read + Send + 'a> {
    match format {
        ImageFormat::Raw => Box::new(source),
        ImageFormat::Zstd => Box::new(ZstdFrames::new(BufReader::with_capacity(1 << 20, source))),
    }
}

/// Keeps [`Source`] to this crate's implementations (the "sealed trait" pattern).
mod sealed {
    pub trait Sealed {}
}

/// The image as the full pipeline reads it: in order. Sealed: the engine trusts the hole count
/// a source gives (it skips zero checks and writes for those bytes), so only this crate's
/// sources, which write the zeros themselves, can give one.
pub trait Source: Read + Send + sealed::Sealed {
    /// Fills `buf` (fewer bytes only at the end of the image); returns the bytes given and how
    /// many of them came from holes of the image file: zeros by the filesystem's own guarantee,
    /// never read. A chunk that is all hole need not be looked at again (the buffer holds the
    /// zeros all the same). `zeroed`: `buf` already holds only zeros, so holes need no writing.
    fn fill_chunk(&mut self, buf: &mut [u8], _zeroed: bool) -> io::Result<(usize, usize)> {
        Ok((fill(self, buf)?, 0))
    }
}

impl sealed::Sealed for WatchedRead<'_> {}

/// The image file read on a thread of its own: holes known (see [`Reopen`]).
impl Source for WatchedRead<'_> {
    fn fill_chunk(&mut self, buf: &mut [u8], zeroed: bool) -> io::Result<(usize, usize)> {
        self.fill_holes(buf, zeroed)
    }
}

/// Any reader as an image [`Source`], without hole information.
pub struct NoHoles<R>(pub R);

impl<R: Read> Read for NoHoles<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl<R: Read + Send> sealed::Sealed for NoHoles<R> {}

impl<R: Read + Send> Source for NoHoles<R> {}

/// Streams `source` (encoded as `spec.format`) onto `target`, verifying size and SHA-256.
/// On error the target's first MiB is zeroed (best effort; the error returned is the cause).
pub fn write_image<R: Read + Send>(
    source: R,
    target: &Target,
    spec: &CopySpec,
    progress: &Progress,
) -> Result<CopyReport, ImageError> {
    write_image_with(NoHoles(source), target, spec, progress, None)
}

/// [`write_image`] from a [`Source`] (whose holes are never read), recording durable
/// checkpoints when the spec verifies by index.
pub fn write_image_with<S: Source>(
    source: S,
    target: &Target,
    spec: &CopySpec,
    progress: &Progress,
    checkpoints: Option<&Checkpoints<'_>>,
) -> Result<CopyReport, ImageError> {
    fits(target, spec)?;
    progress.reset(spec.size);
    let header_len = HEADER_LEN.min(spec.size);
    // Zero the image's range first: the old header stops looking bootable at once, and when the
    // punch works the zero blocks of the image need not be written at all. Block devices take
    // only block-aligned ranges: the unaligned tail (under 4 KiB) is always written.
    let aligned_len = spec.size / ALIGN as u64 * ALIGN as u64;
    let keep = &spec.keep;
    let sparse = aligned_len > 0 && keep.punch(target, 0..aligned_len);
    let zeroed_until = if sparse { aligned_len } else { 0 };
    if !sparse {
        keep.write_zeroes(target, 0..header_len)
            .and_then(|()| target.sync())
            .map_err(ImageError::Sync)?;
    }
    let result = match spec.format {
        ImageFormat::Raw => {
            copy_verified(source, target, spec, progress, zeroed_until, checkpoints)
        }
        format => copy_verified(
            NoHoles(decoder(format, source)),
            target,
            spec,
            progress,
            zeroed_until,
            checkpoints,
        ),
    };
    match result {
        Ok((header, written)) => {
            let header_written = write_runs(target, &header, 0, zeroed_until, keep, false)?;
            target.sync().map_err(ImageError::Sync)?;
            Ok(CopyReport {
                bytes: spec.size,
                written: written + header_written,
                sparse,
            })
        }
        Err(e) => {
            if let Err(z) = keep
                .write_zeroes(target, 0..header_len)
                .and_then(|()| target.sync())
            {
                log::error!(
                    "zeroing the first MiB of {} after a failed copy: {z}",
                    target.path().display()
                );
            }
            Err(e)
        }
    }
}

/// Whether the image fits on the target.
fn fits(target: &Target, spec: &CopySpec) -> Result<(), ImageError> {
    if target.len() < spec.size {
        return Err(ImageError::TargetTooSmall {
            target: target.len(),
            image: spec.size,
        });
    }
    Ok(())
}

/// Runs the pipeline; returns the held-back header and the bytes written after it.
fn copy_verified(
    mut source: impl Source,
    target: &Target,
    spec: &CopySpec,
    progress: &Progress,
    zeroed_until: u64,
    checkpoints: Option<&Checkpoints<'_>>,
) -> Result<(Vec<u8>, u64), ImageError> {
    // With an index, the pipeline's chunks are the index's (each checked on its own, on any
    // core); otherwise 4 MiB.
    let index = match &spec.verify {
        Verification::Index(idx) => Some(idx.as_ref()),
        _ => None,
    };
    let chunk_len = index.map_or(CHUNK_LEN, |i| i.chunk_size() as usize);
    let hashers = spec.verify.checkers();
    // A chunk is settled once written and verified.
    let settled = index.map(|i| Settled::new(i.len(), 2));
    let settled = settled.as_ref();
    let pool = Pool::new(POOL_BUFFERS, chunk_len);
    // An index's chunks go to whichever hasher is free; a block map's shares each see every
    // chunk, in order (`Verification::checker`).
    let queues = if index.is_some() { 1 } else { hashers };
    let (to_hash, hash_rx): (Vec<_>, Vec<_>) = (0..queues)
        .map(|_| {
            let (tx, rx) = sync_channel::<Arc<buf::Chunk>>(POOL_BUFFERS);
            (tx, Arc::new(Mutex::new(rx)))
        })
        .unzip();
    let owners = spec.verify.owners(hashers);
    let (to_write, write_rx) = sync_channel::<Arc<buf::Chunk>>(POOL_BUFFERS);
    let failed = AtomicBool::new(false);
    let header_len = HEADER_LEN.min(spec.size) as usize;
    let verified_chunks = AtomicU64::new(0);

    std::thread::scope(|s| {
        let (pool, failed) = (&pool, &failed);
        // The reader owns the senders: when it ends, the hasher's and writer's loops end.
        let reader = s.spawn(move || -> Result<(), ImageError> {
            let mut offset = 0u64;
            while offset < spec.size {
                if progress.aborted() {
                    return Err(ImageError::Aborted);
                }
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let Some(mut buf) = pool.take() else {
                    return Ok(());
                };
                let want = (spec.size - offset).min(chunk_len as u64) as usize;
                let zeroed = buf.zeroed();
                let (got, holes) = source
                    .fill_chunk(&mut buf.as_mut_slice()[..want], zeroed)
                    .map_err(stall::image_error)?;
                if got < want {
                    return Err(ImageError::TooShort {
                        got: offset + got as u64,
                        expected: spec.size,
                    });
                }
                let mut chunk = pool.chunk(buf, offset, got);
                chunk.hole = holes == got;
                let chunk = Arc::new(chunk);
                offset += got as u64;
                for tx in &to_hash {
                    if tx.send(chunk.clone()).is_err() {
                        return Ok(());
                    }
                }
                if to_write.send(chunk).is_err() {
                    return Ok(());
                }
            }
            let mut probe = [0u8; 1];
            if fill(&mut source, &mut probe).map_err(stall::image_error)? > 0 {
                return Err(ImageError::TooLong {
                    expected: spec.size,
                });
            }
            Ok(())
        });
        // Hashers: one, in order, for a whole-image digest; one per core for a block map (each
        // sees every chunk in order and checks its share of the ranges) or an index (each
        // checks whole chunks against their own digests, in any order). The hashers own their
        // queues: if one panics, its queue closes and the reader stops instead of waiting on it.
        let (owners, verified_chunks) = (&owners, &verified_chunks);
        let hasher = s.spawn(move || -> Result<(), ImageError> {
            let results: Vec<Result<(), ImageError>> = std::thread::scope(|h| {
                let workers: Vec<_> = (0..hashers)
                    .map(|share| {
                        let hash_rx = Arc::clone(&hash_rx[share % queues]);
                        h.spawn(move || -> Result<(), ImageError> {
                            set_lowest_priority();
                            let mut check = spec.verify.checker(share, owners);
                            let mut result = Ok(());
                            // After an error keep draining, so the reader is never blocked on
                            // a full queue.
                            loop {
                                let next = match hash_rx.lock() {
                                    Ok(rx) => rx.recv(),
                                    Err(_) => break,
                                };
                                let Ok(chunk) = next else { break };
                                if result.is_err() {
                                    continue;
                                }
                                result = check.feed(chunk.offset, chunk.data(), chunk.hole);
                                if result.is_err() {
                                    failed.store(true, Ordering::Relaxed);
                                } else if let (Some(idx), Some(st)) = (index, settled) {
                                    verified_chunks.fetch_add(1, Ordering::Relaxed);
                                    result = st.mark(
                                        idx.chunk_at(chunk.offset),
                                        idx,
                                        target,
                                        checkpoints,
                                        progress,
                                    );
                                    if result.is_err() {
                                        failed.store(true, Ordering::Relaxed);
                                    }
                                }
                            }
                            result?;
                            // Once another thread failed the stream is cut short: its error is
                            // the one to report, not this share's missing ranges.
                            match index {
                                Some(_) => Ok(()),
                                None if failed.load(Ordering::Relaxed) => Ok(()),
                                None => check.finish(),
                            }
                        })
                    })
                    .collect();
                drop(hash_rx);
                workers
                    .into_iter()
                    .map(|w| {
                        w.join().unwrap_or_else(|_| {
                            Err(ImageError::Read(io::Error::other("hasher thread panicked")))
                        })
                    })
                    .collect()
            });
            results.into_iter().collect::<Result<(), ImageError>>()?;
            if let Some(idx) = index {
                let seen = verified_chunks.load(Ordering::Relaxed);
                if seen != idx.len() as u64 {
                    let r = idx.range(seen as usize);
                    return Err(ImageError::ChunkMismatch {
                        chunk: seen as usize,
                        start: r.start,
                        end: r.end,
                    });
                }
            }
            Ok(())
        });
        // Writers: several chunks in flight (positional writes need no order), which keeps the
        // device's queue fed while the reader competes for the same disk.
        let write_rx = Mutex::new(write_rx);
        let header = Mutex::new(Vec::new());
        let written = AtomicU64::new(0);
        let write_error = Mutex::new(None);
        std::thread::scope(|w| {
            for _ in 0..WRITERS {
                w.spawn(|| loop {
                    let next = match write_rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(chunk) = next else { return };
                    if failed.load(Ordering::Relaxed) {
                        continue;
                    }
                    let data = chunk.data();
                    // The part of this chunk inside the held-back header (only the first chunk:
                    // HEADER_LEN <= CHUNK_LEN).
                    let in_header = (header_len as u64)
                        .saturating_sub(chunk.offset)
                        .min(data.len() as u64) as usize;
                    if in_header > 0 {
                        lock(&header).extend_from_slice(&data[..in_header]);
                    }
                    let result = write_runs(
                        target,
                        &data[in_header..],
                        chunk.offset + in_header as u64,
                        zeroed_until,
                        &spec.keep,
                        chunk.hole,
                    );
                    match result {
                        Ok(n) => {
                            written.fetch_add(n, Ordering::Relaxed);
                            progress.written.fetch_add(n, Ordering::Relaxed);
                            progress
                                .done
                                .fetch_max(chunk.offset + data.len() as u64, Ordering::Relaxed);
                            if let (Some(idx), Some(st)) = (index, settled) {
                                let marked = st.mark(
                                    idx.chunk_at(chunk.offset),
                                    idx,
                                    target,
                                    checkpoints,
                                    progress,
                                );
                                if let Err(e) = marked {
                                    failed.store(true, Ordering::Relaxed);
                                    lock(&write_error).get_or_insert(e);
                                }
                            }
                        }
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            lock(&write_error).get_or_insert(e);
                        }
                    }
                });
            }
        });
        let header = lock(&header).split_off(0);
        let written = written.into_inner();
        let write_error = lock(&write_error).take();
        let read_result = reader
            .join()
            .unwrap_or_else(|_| Err(ImageError::Read(io::Error::other("reader thread panicked"))));
        let verified = hasher
            .join()
            .unwrap_or_else(|_| Err(ImageError::Read(io::Error::other("hasher thread panicked"))));
        read_result?;
        if let Some(e) = write_error {
            return Err(e);
        }
        verified?;
        target.sync().map_err(ImageError::Sync)?;
        Ok((header, written))
    })
}

/// Writes `data` (image bytes at `offset`), skipping all-zero blocks that lie wholly below
/// `zeroed_until` (the target already reads zeros there) and no byte inside a kept range.
/// `hole`: the bytes came from a hole of the image file, so they are zeros and need no look.
/// Returns the bytes written.
fn write_runs(
    target: &Target,
    data: &[u8],
    offset: u64,
    zeroed_until: u64,
    keep: &Kept,
    hole: bool,
) -> Result<u64, ImageError> {
    let write = |from: usize, to: usize| {
        let range = offset + from as u64..offset + to as u64;
        for r in keep.outside(range) {
            let slice = &data[(r.start - offset) as usize..(r.end - offset) as usize];
            target
                .write_at(slice, r.start)
                .map_err(|source| ImageError::Write {
                    offset: r.start,
                    source,
                })?;
        }
        Ok(())
    };
    let mut written = 0u64;
    let mut run: Option<(usize, usize)> = None;
    let mut at = 0;
    while at < data.len() {
        let end = (at + BLOCK).min(data.len());
        let block = offset + at as u64..offset + end as u64;
        let skippable = block.end <= zeroed_until
            && !keep.touches_block_of(block)
            && (hole || is_zero(&data[at..end]));
        if !skippable {
            run = match run {
                Some((start, last)) if at - last < MIN_HOLE => Some((start, end)),
                Some((start, last)) => {
                    write(start, last)?;
                    written += (last - start) as u64;
                    Some((at, end))
                }
                None => Some((at, end)),
            };
        }
        at = end;
    }
    if let Some((start, last)) = run {
        write(start, last)?;
        written += (last - start) as u64;
    }
    Ok(written)
}

/// The cores this process may use (2 when unknown), at most `at_most`.
pub(crate) fn cores(at_most: usize) -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().min(at_most))
}

/// True when every byte is zero (`lazarus_node::index::is_zero`).
pub(crate) fn is_zero(block: &[u8]) -> bool {
    lazarus_node::index::is_zero(block)
}

/// setpriority(PRIO_PROCESS, 0, 19): puts the calling thread at the lowest CPU priority (on
/// Linux the nice value is the thread's own). Hashing threads call it: they take whatever CPU is left, and a thread that
/// reads or writes the disk gets a core the moment its I/O completes, so the disk never waits
/// behind a hash (see [`diff`]'s checking). Best effort: a failure leaves the priority as it is.
pub(crate) fn set_lowest_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        log::debug!("lowering a hashing thread's priority: {e}");
    }
}

/// Locks a mutex, also after a panic elsewhere (the data is plain bytes or an error).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads until `buf` is full or the source ends.
fn fill(source: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match source.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
