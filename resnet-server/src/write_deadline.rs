//! A connection's byte stream whose writes must make progress.
//!
//! hyper bounds the time to read a request's head (`--header-timeout-s`) and the handler runs
//! under the request deadline (`--timeout-s`), but nothing bounded the time spent *writing* the
//! answer: a client that pipelines requests and never reads fills its socket buffers, the
//! server's write waits forever, and the connection slot is never given back. [`WriteDeadline`]
//! wraps the socket: once a write (or flush) cannot go on, a timer starts; any progress stops
//! it; when it fires (`--write-timeout-s` without progress) the write fails with `TimedOut`,
//! hyper drops the connection and its slot is free again. That also bounds shutdown's drain.

use crate::metrics::Metrics;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `io` with a bound on the time a write may go without progress.
pub struct WriteDeadline<I> {
    io: I,
    timeout: Duration,
    /// Running while the client is not reading: started by the first write that cannot go on.
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl<I> WriteDeadline<I> {
    /// Wraps `io`; a write that makes no progress for `timeout` fails.
    pub fn new(io: I, timeout: Duration, metrics: Arc<Metrics>) -> WriteDeadline<I> {
        WriteDeadline {
            io,
            timeout,
            stalled: None,
            metrics,
        }
    }

    fn progressed(&mut self) {
        if self.stalled.take().is_some() {
            self.metrics.stalled_writers_add(-1);
        }
    }

    /// Passes a finished write on (and stops the timer); on `Pending`, starts or polls it.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.progressed();
            return polled;
        }
        let timer = self.stalled.get_or_insert_with(|| {
            self.metrics.stalled_writers_add(1);
            Box::pin(tokio::time::sleep(self.timeout))
        });
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.progressed();
                self.metrics.write_timed_out();
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the client read nothing of the answer for {:.1} s (--write-timeout-s)",
                        self.timeout.as_secs_f64()
                    ),
                )))
            }
        }
    }
}

impl<I> Drop for WriteDeadline<I> {
    fn drop(&mut self) {
        self.progressed();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for WriteDeadline<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.watch(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A peer that never reads: the write fails after the timeout, counted once; a peer that
    /// reads lets the same amount through.
    #[tokio::test]
    async fn a_write_nobody_reads_fails_after_the_timeout() {
        let metrics = Arc::new(Metrics::default());
        let (_peer, ours) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_millis(200), Arc::clone(&metrics));
        let started = std::time::Instant::now();
        let err = w.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let text = metrics.render();
        assert!(
            text.contains("resnet_connections_write_timeouts_total 1\n"),
            "{text}"
        );
        assert!(text.contains("resnet_connections_stalled 0\n"), "{text}");

        let (mut peer, ours) = tokio::io::duplex(1024);
        let mut w = WriteDeadline::new(ours, Duration::from_millis(200), Arc::clone(&metrics));
        let reader = tokio::spawn(async move {
            let mut sink = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut peer, &mut sink)
                .await
                .map(|_| sink.len())
        });
        w.write_all(&[0u8; 4096]).await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(reader.await.unwrap().unwrap(), 4096);
    }
}
