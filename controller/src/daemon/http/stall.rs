//! A connection that fails once a read or a write makes no progress for too long: a client that
//! stops reading its answer, or goes quiet between requests, frees its connection.
//!
//! hyper bounds the time to read a request's head (`header_read_timeout`) but not a stalled
//! write; this wrapper bounds both, per operation, so a slow but moving transfer is never cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Sleep};

/// `io`, whose reads and writes fail with `TimedOut` after a stall of their limit.
pub struct Stall<T> {
    io: T,
    read_limit: Duration,
    write_limit: Duration,
    read_timer: Option<Pin<Box<Sleep>>>,
    write_timer: Option<Pin<Box<Sleep>>>,
}

impl<T> Stall<T> {
    pub fn new(io: T, read_limit: Duration, write_limit: Duration) -> Self {
        Self {
            io,
            read_limit,
            write_limit,
            read_timer: None,
            write_timer: None,
        }
    }
}

/// What to answer for an operation that returned `poll`: a pending one arms `timer` (once) and
/// fails when it fires; a finished one disarms it.
fn watch<R>(
    poll: Poll<io::Result<R>>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    limit: Duration,
    cx: &mut Context<'_>,
) -> Poll<io::Result<R>> {
    match poll {
        Poll::Ready(r) => {
            *timer = None;
            Poll::Ready(r)
        }
        Poll::Pending => {
            let t = timer.get_or_insert_with(|| Box::pin(sleep(limit)));
            match t.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no progress for {} s", limit.as_secs()),
                ))),
                Poll::Pending => Poll::Pending,
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stall<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        watch(poll, &mut this.read_timer, this.read_limit, cx)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stall<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write(cx, buf);
        watch(poll, &mut this.write_timer, this.write_limit, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        watch(poll, &mut this.write_timer, this.write_limit, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_flush(cx);
        watch(poll, &mut this.write_timer, this.write_limit, cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.io).poll_shutdown(cx);
        watch(poll, &mut this.write_timer, this.write_limit, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
    }

    #[test]
    fn a_write_nobody_reads_fails_after_its_limit() {
        rt().block_on(async {
            let (a, _b) = tokio::io::duplex(64);
            let mut s = Stall::new(a, Duration::from_secs(60), Duration::from_secs(5));
            let e = s.write_all(&[0; 4096]).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        });
    }

    #[test]
    fn a_quiet_peer_fails_the_read_after_its_limit_a_talking_one_does_not() {
        rt().block_on(async {
            let (a, mut b) = tokio::io::duplex(64);
            let mut s = Stall::new(a, Duration::from_secs(5), Duration::from_secs(5));
            let talker = tokio::spawn(async move {
                for _ in 0..4 {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                    b.write_all(b"x").await.unwrap();
                }
                b
            });
            let mut buf = [0; 1];
            for _ in 0..4 {
                s.read_exact(&mut buf).await.unwrap();
            }
            let _b = talker.await.unwrap();
            let e = s.read_exact(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        });
    }
}
