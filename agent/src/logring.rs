//! The agent's logger: every line to stderr (the console) and into a ring the protocol's
//! `GetLogs` reads from.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use lazarus_proto::{LogLine, Logs};

/// Lines kept for `GetLogs`.
const KEEP: usize = 2000;
/// Bytes of log text one `Logs` reply carries at most (well under the 64 KiB frame limit).
const REPLY_BUDGET: usize = 48 << 10;

/// The ring of recent log lines.
pub struct LogRing {
    start: Instant,
    lines: Mutex<(u64, VecDeque<LogLine>)>,
    echo: bool,
    /// `/dev/kmsg`, in PID 1 mode: the kernel's log keeps our lines beside its own.
    kmsg: Mutex<Option<std::fs::File>>,
    /// The agent's phase (and step), shown on every console line.
    phase: Mutex<String>,
}

static RING: OnceLock<LogRing> = OnceLock::new();

impl LogRing {
    /// Installs the ring as the `log` backend (once per process); `echo` also writes stderr.
    pub fn install(echo: bool, level: log::LevelFilter) -> &'static LogRing {
        let ring = RING.get_or_init(|| LogRing {
            start: Instant::now(),
            lines: Mutex::new((0, VecDeque::with_capacity(KEEP))),
            echo,
            kmsg: Mutex::new(None),
            phase: Mutex::new("booting".into()),
        });
        if log::set_logger(ring).is_ok() {
            log::set_max_level(level);
        }
        ring
    }

    /// Sets the phase shown on console lines (`ready`, `recovering/copy_image`, …), if the ring
    /// is installed.
    pub fn set_phase(phase: &str) {
        if let Some(ring) = RING.get() {
            *ring.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.to_string();
        }
    }

    /// Also writes every line to `kmsg` (`/dev/kmsg`).
    pub fn log_to_kmsg(&self, kmsg: std::fs::File) {
        *self.kmsg.lock().unwrap_or_else(|p| p.into_inner()) = Some(kmsg);
    }

    /// Lines with sequence number `since` or later, within one reply's budget.
    pub fn since(&self, since: u64) -> Logs {
        let guard = match self.lines.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut out = Vec::new();
        let mut budget = REPLY_BUDGET;
        let mut next = since.max(guard.1.front().map_or(guard.0, |l| l.seq));
        for line in guard.1.iter().filter(|l| l.seq >= since) {
            let cost = line.message.len() + 16;
            if cost > budget {
                break;
            }
            budget -= cost;
            next = line.seq + 1;
            out.push(line.clone());
        }
        Logs { lines: out, next }
    }
}

impl log::Log for LogRing {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let time_ms = self.start.elapsed().as_millis() as u64;
        let mut message = record.args().to_string();
        if message.len() > 4096 {
            let mut cut = 4096;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let phase = self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if self.echo {
            let _ = writeln!(
                std::io::stderr(),
                "[{:>6}.{:03}] {:<5} {phase}: {}",
                time_ms / 1000,
                time_ms % 1000,
                record.level(),
                message
            );
        }
        if let Some(kmsg) = self.kmsg.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let prio = match record.level() {
                log::Level::Error => 3,
                log::Level::Warn => 4,
                log::Level::Info => 6,
                log::Level::Debug | log::Level::Trace => 7,
            };
            let _ = writeln!(kmsg, "<{prio}>lazarus: {phase}: {message}");
        }
        let mut guard = match self.lines.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let seq = guard.0;
        guard.0 += 1;
        if guard.1.len() == KEEP {
            guard.1.pop_front();
        }
        guard.1.push_back(LogLine {
            seq,
            time_ms,
            level: record.level() as u8,
            message,
        });
    }

    fn flush(&self) {}
}
