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
//! every second at the same offset, through a new open of the file ([`Reopen`]), until the limit, so a server that comes back lets the copy go on where it
//! stopped. An abandoned thread ends when its blocked read returns and finds nobody waiting.

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

/// An answer from the reading thread: data, or a read error (`retrying` when it will try again).
enum Answer {
    Data(Vec<u8>),
    Failed { error: io::Error, retrying: bool },
}

/// Waits for the next data answer, watching abort, stall report and limit.
fn wait(rx: &Receiver<Answer>, progress: &Progress) -> io::Result<Vec<u8>> {
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
fn attempt(tx: &SyncSender<Answer>, mut read: impl FnMut() -> io::Result<Vec<u8>>) -> bool {
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
    rx: Receiver<Answer>,
    progress: &'p Progress,
    buf: Vec<u8>,
    at: usize,
    eof: bool,
}

impl<'p> WatchedRead<'p> {
    pub fn new<R: Read + Send + 'static>(mut source: R, progress: &'p Progress) -> Self {
        let (tx, rx) = sync_channel(2);
        std::thread::spawn(move || loop {
            let ok = attempt(&tx, || {
                let mut v = vec![0u8; READ_LEN];
                let n = source.read(&mut v)?;
                v.truncate(n);
                Ok(v)
            });
            if !ok {
                return;
            }
        });
        Self {
            rx,
            progress,
            buf: Vec::new(),
            at: 0,
            eof: false,
        }
    }
}

impl Read for WatchedRead<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at == self.buf.len() {
            if self.eof || out.is_empty() {
                return Ok(0);
            }
            self.buf = wait(&self.rx, self.progress)?;
            self.at = 0;
            if self.buf.is_empty() {
                self.eof = true;
                return Ok(0);
            }
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
pub struct Reopen {
    path: std::path::PathBuf,
    file: Option<File>,
    pos: u64,
}

impl Reopen {
    /// `file` already open on `path` (the first open's error is the caller's to report).
    pub fn new(path: std::path::PathBuf, file: File) -> Self {
        Self {
            path,
            file: Some(file),
            pos: 0,
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
}

impl Read for Reopen {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Plain read(2), not pread: the source may be a pipe.
        let result = self.file().and_then(|mut f| f.read(buf));
        match result {
            Ok(n) => {
                self.pos += n as u64;
                Ok(n)
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
    rx: Receiver<Answer>,
    progress: &'p Progress,
}

impl<'p> WatchedFile<'p> {
    pub fn new(mut file: Reopen, progress: &'p Progress) -> Self {
        let (req, requests) = sync_channel::<(u64, usize)>(1);
        let (tx, rx) = sync_channel(1);
        std::thread::spawn(move || {
            for (offset, len) in requests {
                let ok = attempt(&tx, || {
                    let mut v = vec![0u8; len];
                    file.read_at(&mut v, offset)?;
                    Ok(v)
                });
                if !ok {
                    return;
                }
            }
        });
        Self { req, rx, progress }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.req
            .send((offset, buf.len()))
            .map_err(|_| io::Error::other("the source's reading thread ended"))?;
        let v = wait(&self.rx, self.progress)?;
        buf.copy_from_slice(&v);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

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
        let mut r = WatchedRead::new(Gated(rx), &progress);
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
        let mut r = WatchedRead::new(Gated(rx), &progress);
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
        let file = WatchedRead::new(Gated(rx), &progress);
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
        let mut r = WatchedRead::new(Gated(rx), &fresh);
        assert!(matches!(
            image_error(r.read(&mut [0u8; 4]).unwrap_err()),
            ImageError::Read(_)
        ));
    }
}
