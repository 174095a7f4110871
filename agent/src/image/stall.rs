//! Source reads on threads of their own, which a copy can abandon: a vanished NFS server is a
//! pause, not a failure, and `Abort` takes effect while a read is blocked.
//!
//! The thread owns the source (a `File` on the NFS export) and does the reads; the copy waits for
//! each answer in short slices. Between slices it looks at the abort flag (so an abort is
//! effective within [`POLL`] however long the read blocks) and at how long the source has given
//! nothing: past the report time (10 s) [`Progress::stalled_since`] says since when, for
//! `Status`; past the limit (10 min by default, [`Progress::set_stall_times`]) the copy fails with
//! [`ImageError::SourceStalled`]. Reads that fail the way a soft NFS mount fails while its
//! server is away (`EIO`, `ETIMEDOUT`, unreachable, refused, reset, a stale handle) are retried
//! every second at the same offset, through a new open of the file ([`Reopen`]), until the
//! limit, so a server that comes back lets the copy go on where it stopped. An abandoned thread
//! ends when its blocked read returns and finds nobody waiting.
//!
//! [`Reopen`] also asks the image file where its holes are and hands them on without reading
//! them ([`Piece::Hole`]); the copy engine takes them as zeros (`Source` in `mod.rs`).

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use super::{ImageError, Progress};

/// How often a waiting copy looks at the abort flag.
pub const POLL: Duration = Duration::from_millis(200);
/// Size of one sequential read.
const READ_LEN: usize = 1 << 20;
/// Between two attempts of a failing read.
const RETRY: Duration = Duration::from_secs(1);

/// Why a wait ended without data: carried inside an `io::Error` through `Read`, and turned back
/// into its [`ImageError`] by [`image_error`].
#[derive(Debug, thiserror::Error)]
enum Interrupt {
    #[error("copy aborted on request")]
    Aborted,
    #[error("the image source gave nothing for {secs} s{}", last.as_ref().map_or(String::new(), |e| format!(" (last error: {e})")))]
    Stalled { secs: u64, last: Option<String> },
}

/// The copy engine's error for a failed read: an abort or a stall when the wait ended so,
/// else a read error.
pub(super) fn image_error(e: io::Error) -> ImageError {
    match e.get_ref().and_then(|i| i.downcast_ref::<Interrupt>()) {
        Some(Interrupt::Aborted) => ImageError::Aborted,
        Some(Interrupt::Stalled { secs, last }) => ImageError::SourceStalled {
            secs: *secs,
            last: last.clone().unwrap_or_default(),
        },
        None => ImageError::Read(e),
    }
}

/// Whether a failed read is what a soft NFS mount returns while its server is away.
fn transient(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let Some(code) = e.raw_os_error() else {
        return false;
    };
    [
        Errno::IO,
        Errno::TIMEDOUT,
        Errno::AGAIN,
        Errno::NETUNREACH,
        Errno::HOSTUNREACH,
        Errno::CONNREFUSED,
        Errno::CONNRESET,
        Errno::STALE,
    ]
    .iter()
    .any(|e| e.raw_os_error() == code)
}

/// An answer from the reading thread: a piece, or a read error (`retrying` when it will try
/// again).
enum Answer<T> {
    Data(T),
    Failed { error: io::Error, retrying: bool },
}

/// One piece of a source read in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Bytes read (empty at the end).
    Data(Vec<u8>),
    /// The next `n` bytes are a hole of the image file: zeros by the filesystem's own guarantee
    /// (`lseek(SEEK_DATA)`), not read, so they never cross the network.
    Hole(u64),
}

/// A source read in order on a [`WatchedRead`]'s thread.
pub trait Pieces: Send + 'static {
    /// The next piece, of at most `max` bytes; data goes into `buf` (a buffer given back by
    /// the reader, or a new one), which comes back as [`Piece::Data`].
    fn next_piece(&mut self, buf: Vec<u8>, max: usize) -> io::Result<Piece>;
}

/// `buf` grown to `len` bytes. A recycled buffer keeps its old bytes: whoever reads into it
/// keeps only what was read.
fn sized(mut buf: Vec<u8>, len: usize) -> Vec<u8> {
    buf.resize(len, 0);
    buf
}

/// Any reader, read as it comes (it has no holes).
#[cfg(test)]
pub struct Plain<R>(pub R);

#[cfg(test)]
impl<R: Read + Send + 'static> Pieces for Plain<R> {
    fn next_piece(&mut self, buf: Vec<u8>, max: usize) -> io::Result<Piece> {
        let mut v = sized(buf, max);
        let n = self.0.read(&mut v)?;
        v.truncate(n);
        Ok(Piece::Data(v))
    }
}

/// Waits for the next data answer, watching abort, stall report and limit.
fn wait<T>(rx: &Receiver<Answer<T>>, progress: &Progress) -> io::Result<T> {
    let since = Instant::now();
    let mut last_error: Option<String> = None;
    let (report, limit) = progress.stall_times();
    loop {
        match rx.recv_timeout(POLL) {
            Ok(Answer::Data(v)) => {
                progress.clear_stall();
                return Ok(v);
            }
            Ok(Answer::Failed { error, retrying }) => {
                if !retrying {
                    progress.clear_stall();
                    return Err(error);
                }
                last_error = Some(error.to_string());
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err(io::Error::other("the source's reading thread ended"));
            }
        }
        if progress.aborted() {
            return Err(io::Error::other(Interrupt::Aborted));
        }
        let waited = since.elapsed();
        if waited >= report {
            progress.mark_stalled(waited, last_error.as_deref());
        }
        if waited >= limit {
            return Err(io::Error::other(Interrupt::Stalled {
                secs: waited.as_secs(),
                last: last_error,
            }));
        }
    }
}

/// Reads `read` until it succeeds, fails for good, or nobody waits any more.
fn attempt<T>(tx: &SyncSender<Answer<T>>, mut read: impl FnMut() -> io::Result<T>) -> bool {
    loop {
        match read() {
            Ok(v) => return tx.send(Answer::Data(v)).is_ok(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                let retrying = transient(&error);
                if tx.send(Answer::Failed { error, retrying }).is_err() || !retrying {
                    return false;
                }
                std::thread::sleep(RETRY);
            }
        }
    }
}

/// A sequential source (the image file, raw or compressed) read on its own thread.
pub struct WatchedRead<'p> {
    rx: Receiver<Answer<Piece>>,
    /// Used buffers back to the reading thread: no new allocation (and page faults) per piece.
    spare: SyncSender<Vec<u8>>,
    progress: &'p Progress,
    buf: Vec<u8>,
    at: usize,
    /// Bytes left of the current hole piece.
    hole: u64,
    eof: bool,
}

impl<'p> WatchedRead<'p> {
    pub fn new(mut source: impl Pieces, progress: &'p Progress) -> Self {
        let (tx, rx) = sync_channel(2);
        let (spare, spares) = sync_channel::<Vec<u8>>(4);
        std::thread::spawn(move || loop {
            let mut buf = spares.try_recv().ok();
            if !attempt(&tx, || {
                source.next_piece(buf.take().unwrap_or_default(), READ_LEN)
            }) {
                return;
            }
        });
        Self {
            rx,
            spare,
            progress,
            buf: Vec::new(),
            at: 0,
            hole: 0,
            eof: false,
        }
    }

    /// Makes sure something is buffered (data or hole); false at the end.
    fn more(&mut self) -> io::Result<bool> {
        while self.hole == 0 && self.at == self.buf.len() {
            if self.eof {
                return Ok(false);
            }
            match wait(&self.rx, self.progress)? {
                Piece::Data(v) if v.is_empty() => self.eof = true,
                Piece::Data(v) => {
                    // What `fetched` counts: bytes as they come from the file (compressed ones
                    // for a zstd image), holes not.
                    self.progress
                        .fetched
                        .fetch_add(v.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    let used = std::mem::replace(&mut self.buf, v);
                    self.at = 0;
                    let _ = self.spare.try_send(used);
                }
                Piece::Hole(n) => self.hole = n,
            }
        }
        Ok(true)
    }

    /// Fills `out` (fewer bytes only at the end); returns the bytes given and how many of them
    /// came from holes of the file (zeros, never read). `zeroed`: `out` holds only zeros
    /// already, so holes are left as they are.
    pub(crate) fn fill_holes(
        &mut self,
        out: &mut [u8],
        zeroed: bool,
    ) -> io::Result<(usize, usize)> {
        let (mut got, mut holes) = (0, 0);
        while got < out.len() && self.more()? {
            if self.hole > 0 {
                let n = (out.len() - got).min(self.hole as usize);
                if !zeroed {
                    out[got..got + n].fill(0);
                }
                self.hole -= n as u64;
                holes += n;
                got += n;
            } else {
                got += self.read(&mut out[got..])?;
            }
        }
        Ok((got, holes))
    }
}

impl Read for WatchedRead<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || !self.more()? {
            return Ok(0);
        }
        if self.hole > 0 {
            let n = out.len().min(self.hole as usize);
            out[..n].fill(0);
            self.hole -= n as u64;
            return Ok(n);
        }
        let n = out.len().min(self.buf.len() - self.at);
        out[..n].copy_from_slice(&self.buf[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// The image file by path, reopened after a failed read: after an NFS server restart the old
/// open state may be gone for good (a restarted server without a grace period refuses to
/// reclaim it), while a new open works. Reads go on from the same offset.
///
/// Read in order, it asks the file where its holes are ([`Reopen::find_hole`]: a local file
/// system, or NFS 4.2) and gives holes of at least [`MIN_HOLE`] as [`Piece::Hole`] without
/// reading them; shorter holes are read through with the data around them, so a finely
/// fragmented file costs at most two `lseek`s per read, not two per fragment. A file that cannot
/// say (a pipe, an older NFS) is read through.
pub struct Reopen {
    path: std::path::PathBuf,
    file: Option<File>,
    pos: u64,
    /// Where the next hole from `pos` starts (None: ask the file).
    data_until: Option<u64>,
    /// False once the file could not say where its holes are: every byte is read.
    holes: bool,
    /// False for a pipe (`lseek` fails with ESPIPE): read(2) instead of pread.
    positioned: bool,
}

/// Holes shorter than this (one read) are read through rather than skipped.
pub const MIN_HOLE: u64 = READ_LEN as u64;

impl Reopen {
    /// `file` already open on `path` (the first open's error is the caller's to report).
    pub fn new(path: std::path::PathBuf, file: File) -> Self {
        Self {
            path,
            file: Some(file),
            pos: 0,
            data_until: None,
            holes: true,
            positioned: true,
        }
    }

    fn file(&mut self) -> io::Result<&File> {
        if self.file.is_none() {
            let mut f = File::open(&self.path)?;
            // Sequential reads go on from where they stopped (a pipe cannot, and fails here).
            io::Seek::seek(&mut f, io::SeekFrom::Start(self.pos))?;
            log::info!("reopened {} at byte {}", self.path.display(), self.pos);
            self.file = Some(f);
        }
        self.file
            .as_ref()
            .ok_or_else(|| io::Error::other("no file"))
    }

    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let result = self.file().and_then(|f| f.read_exact_at(buf, offset));
        if result.is_err() {
            self.file = None;
        }
        result
    }

    /// lseek(fd, pos, SEEK_DATA), then SEEK_HOLE or the file's size: the length of the hole at
    /// `pos` (0 when data is there or the file cannot tell), and caches where the data from
    /// there ends. The file offset these move is never used: reads are positioned (pread).
    fn find_hole(&mut self) -> io::Result<u64> {
        use rustix::fs::{seek, SeekFrom};
        use rustix::io::Errno;
        let pos = self.pos;
        if !self.holes || self.data_until.is_some_and(|end| pos < end) {
            return Ok(0);
        }
        let retry = |f: &File, whence| loop {
            match seek(f, whence) {
                Err(Errno::INTR) => continue,
                other => return other,
            }
        };
        let f = self.file()?;
        let found = match retry(f, SeekFrom::Data(pos)) {
            Ok(data) if data > pos => Ok((data - pos, None)),
            Ok(_) => match retry(f, SeekFrom::Hole(pos)) {
                Ok(hole) => Ok((0, Some(hole.max(pos + 1)))),
                // The file shrank under us: read on, and let the engine count the bytes.
                Err(Errno::NXIO) => Ok((0, Some(u64::MAX))),
                Err(e) => Err(e),
            },
            // No data from `pos` on: a hole up to the end, or the end itself.
            Err(Errno::NXIO) => match f.metadata() {
                Ok(m) if pos < m.len() => Ok((m.len() - pos, None)),
                Ok(_) => Ok((0, Some(u64::MAX))),
                Err(e) => {
                    self.file = None;
                    return Err(e);
                }
            },
            Err(e) => Err(e),
        };
        match found {
            Ok((hole, data_until)) => {
                self.data_until = data_until;
                Ok(hole)
            }
            Err(e @ (Errno::SPIPE | Errno::INVAL | Errno::OPNOTSUPP | Errno::NOSYS)) => {
                // A pipe fails at its first lseek, before any read: its offset is untouched.
                self.positioned = e != Errno::SPIPE;
                self.holes = false;
                Ok(0)
            }
            Err(e) => {
                self.file = None;
                Err(e.into())
            }
        }
    }
}

impl Pieces for Reopen {
    fn next_piece(&mut self, buf: Vec<u8>, max: usize) -> io::Result<Piece> {
        let hole = self.find_hole()?;
        if hole >= MIN_HOLE {
            self.pos += hole;
            return Ok(Piece::Hole(hole));
        }
        // Data, or a short hole read through with what follows it.
        let mut v = sized(buf, max);
        let (pos, positioned) = (self.pos, self.positioned);
        let result = self.file().and_then(|mut f| {
            if positioned {
                f.read_at(&mut v, pos)
            } else {
                f.read(&mut v)
            }
        });
        match result {
            Ok(got) => {
                self.pos += got as u64;
                v.truncate(got);
                Ok(Piece::Data(v))
            }
            Err(e) => {
                self.file = None;
                Err(e)
            }
        }
    }
}

/// A random-access source (a raw image) whose `pread`s run on their own thread.
pub struct WatchedFile<'p> {
    req: SyncSender<(u64, usize)>,
    /// Each answer names the offset it was read at.
    rx: Receiver<Answer<(u64, Vec<u8>)>>,
    /// Used buffers back to the reading thread: no new allocation (and page faults) per read.
    spare: SyncSender<Vec<u8>>,
    progress: &'p Progress,
}

impl<'p> WatchedFile<'p> {
    pub fn new(mut file: Reopen, progress: &'p Progress) -> Self {
        let (req, requests) = sync_channel::<(u64, usize)>(1);
        let (tx, rx) = sync_channel(1);
        let (spare, spares) = sync_channel::<Vec<u8>>(2);
        std::thread::spawn(move || {
            for (offset, len) in requests {
                let mut v = spares.try_recv().unwrap_or_default();
                v.resize(len, 0);
                let ok = attempt(&tx, || {
                    file.read_at(&mut v, offset)?;
                    Ok((offset, std::mem::take(&mut v)))
                });
                if !ok {
                    return;
                }
            }
        });
        Self {
            req,
            rx,
            spare,
            progress,
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.req
            .send((offset, buf.len()))
            .map_err(|_| io::Error::other("the source's reading thread ended"))?;
        // The thread may have gone (it ends with the source); a spare is then just dropped.
        let v = loop {
            let (at, v) = wait(&self.rx, self.progress)?;
            if at == offset && v.len() == buf.len() {
                break v;
            }
            // The answer to a read an earlier caller gave up on (a stall past its limit): it
            // is dropped, not taken for this one.
            let _ = self.spare.try_send(v);
        };
        buf.copy_from_slice(&v);
        let _ = self.spare.try_send(v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    #[test]
    fn a_watched_file_drops_the_late_answer_to_an_abandoned_read() {
        let progress = Progress::default();
        let (req, requests) = sync_channel(1);
        let (tx, rx) = sync_channel(2);
        let (spare, _spares) = sync_channel(2);
        let file = WatchedFile {
            req,
            rx,
            spare,
            progress: &progress,
        };
        // The reading thread, played here: it first answers a read given up on earlier (another
        // offset, a shorter chunk), then this one.
        tx.send(Answer::Data((0, vec![1u8; 3]))).unwrap();
        tx.send(Answer::Data((8, vec![2u8; 5]))).unwrap();
        let mut buf = [0u8; 5];
        file.read_at(&mut buf, 8).unwrap();
        assert_eq!(buf, [2u8; 5]);
        assert_eq!(requests.try_recv().unwrap(), (8, 5));
    }

    /// A source that gives `parts` one by one, each only when the test lets it.
    struct Gated(Receiver<io::Result<Vec<u8>>>);

    impl Read for Gated {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            match self.0.recv() {
                Ok(Ok(v)) => {
                    out[..v.len()].copy_from_slice(&v);
                    Ok(v.len())
                }
                Ok(Err(e)) => Err(e),
                Err(_) => Ok(0),
            }
        }
    }

    #[test]
    fn a_stalled_source_is_reported_then_resumes_where_it_stopped() {
        let progress = Progress::default();
        progress.set_stall_times(Duration::from_millis(300), Duration::from_secs(30));
        let (gate, rx) = channel();
        let mut r = WatchedRead::new(Plain(Gated(rx)), &progress);
        gate.send(Ok(b"abc".to_vec())).unwrap();
        let mut out = [0u8; 8];
        assert_eq!(r.read(&mut out).unwrap(), 3);
        std::thread::scope(|s| {
            let reader = s.spawn(move || {
                let mut out = [0u8; 8];
                let n = r.read(&mut out).unwrap();
                out[..n].to_vec()
            });
            // The server is away: a transient error, then nothing.
            gate.send(Err(io::Error::from_raw_os_error(
                rustix::io::Errno::IO.raw_os_error(),
            )))
            .unwrap();
            std::thread::sleep(Duration::from_millis(900));
            assert!(progress.stalled_since().is_some(), "no stall reported");
            assert!(progress.counters().source_stalled_since.is_some());
            // It comes back: the read returns what follows, from where it stopped.
            gate.send(Ok(b"def".to_vec())).unwrap();
            assert_eq!(reader.join().unwrap(), b"def");
        });
        assert_eq!(progress.stalled_since(), None, "the stall was not cleared");
    }

    #[test]
    fn abort_takes_effect_while_a_read_is_blocked_and_a_stall_has_a_limit() {
        let progress = Progress::default();
        let (_gate, rx) = channel::<io::Result<Vec<u8>>>();
        let mut r = WatchedRead::new(Plain(Gated(rx)), &progress);
        let start = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(300));
                progress.abort();
            });
            let e = r.read(&mut [0u8; 4]).unwrap_err();
            assert!(matches!(image_error(e), ImageError::Aborted));
        });
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );

        let progress = Progress::default();
        progress.set_stall_times(Duration::from_millis(100), Duration::from_millis(600));
        let (_gate2, rx) = channel::<io::Result<Vec<u8>>>();
        let file = WatchedRead::new(Plain(Gated(rx)), &progress);
        let mut file = file;
        let e = file.read(&mut [0u8; 4]).unwrap_err();
        assert!(
            matches!(image_error(e), ImageError::SourceStalled { .. }),
            "not a stall"
        );
        // A permanent error is not retried.
        let (gate3, rx) = channel();
        gate3
            .send(Err(io::Error::from_raw_os_error(
                rustix::io::Errno::ISDIR.raw_os_error(),
            )))
            .unwrap();
        let fresh = Progress::default();
        let mut r = WatchedRead::new(Plain(Gated(rx)), &fresh);
        assert!(matches!(
            image_error(r.read(&mut [0u8; 4]).unwrap_err()),
            ImageError::Read(_)
        ));
    }

    /// A file of `len` bytes with `data` written at its offsets and holes elsewhere.
    fn sparse_file(dir: &std::path::Path, len: u64, data: &[(u64, &[u8])]) -> std::path::PathBuf {
        let path = dir.join("sparse.img");
        let f = File::create(&path).unwrap();
        f.set_len(len).unwrap();
        for (at, bytes) in data {
            f.write_all_at(bytes, *at).unwrap();
        }
        path
    }

    /// The bytes `r` gives, how many came as holes, and in how many pieces.
    fn pieces(mut r: impl Pieces) -> (Vec<u8>, u64, usize) {
        let (mut out, mut holes, mut n) = (Vec::new(), 0, 0);
        loop {
            n += 1;
            match r.next_piece(Vec::new(), READ_LEN).unwrap() {
                Piece::Data(v) if v.is_empty() => return (out, holes, n),
                Piece::Data(v) => out.extend_from_slice(&v),
                Piece::Hole(n) => {
                    out.resize(out.len() + n as usize, 0);
                    holes += n;
                }
            }
        }
    }

    #[test]
    fn holes_of_the_file_are_given_as_holes_and_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let mib = 1u64 << 20;
        let data = vec![0x5au8; 64 << 10];
        let path = sparse_file(
            dir.path(),
            9 * mib + 123,
            &[(0, &data), (5 * mib, &data), (9 * mib, &[7; 123])],
        );
        let file = File::open(&path).unwrap();
        let (bytes, holes, _) = pieces(Reopen::new(path.clone(), file));
        assert!(
            bytes == std::fs::read(&path).unwrap(),
            "the pieces are not the file"
        );
        // The two holes, but the MiB read after each data stretch (a read is 1 MiB).
        assert_eq!(holes, 7 * mib, "bytes given as holes");
        // Read through a WatchedRead the same way, with the count of hole bytes.
        let progress = Progress::default();
        let file = File::open(&path).unwrap();
        let mut r = WatchedRead::new(Reopen::new(path.clone(), file), &progress);
        let mut out = vec![0xffu8; (10 * mib) as usize];
        let (got, hole_bytes) = r.fill_holes(&mut out, false).unwrap();
        assert_eq!(got as u64, 9 * mib + 123);
        assert_eq!(hole_bytes as u64, holes);
        assert!(out[..got] == bytes[..]);
    }

    #[test]
    fn a_pipe_is_read_through() {
        let (rx, mut tx) = std::io::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            std::io::Write::write_all(&mut tx, &[3u8; 100_000]).unwrap();
        });
        let rx = File::from(std::os::fd::OwnedFd::from(rx));
        let (bytes, holes, _) = pieces(Reopen::new("/nonexistent".into(), rx));
        writer.join().unwrap();
        assert_eq!((bytes, holes), (vec![3u8; 100_000], 0));
    }

    #[test]
    fn short_holes_are_read_through_a_read_at_a_time() {
        // 8 MiB of 4 KiB data blocks and 4 KiB holes, in turn: read as 8 pieces of 1 MiB, not
        // as 2,048 pieces with two lseeks each.
        let dir = tempfile::tempdir().unwrap();
        let blocks: Vec<(u64, [u8; 4096])> = (0..1024u64)
            .map(|i| (i * 8192, [i as u8 | 1; 4096]))
            .collect();
        let data: Vec<(u64, &[u8])> = blocks.iter().map(|(at, b)| (*at, &b[..])).collect();
        let path = sparse_file(dir.path(), 8 << 20, &data);
        let file = File::open(&path).unwrap();
        let (bytes, holes, n) = pieces(Reopen::new(path.clone(), file));
        assert!(
            bytes == std::fs::read(&path).unwrap(),
            "the pieces are not the file"
        );
        assert_eq!((holes, n), (0, 9), "holes and pieces (the last one empty)");
    }
}
