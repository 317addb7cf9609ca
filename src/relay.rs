//! Bidirectional byte relay for tunnels, with an idle timeout and byte counts
//! (for the access log and metrics).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides finished normally.
    Closed,
    /// No traffic either way for the idle timeout.
    Idle,
    /// An I/O error on either side (usually a reset).
    Error,
    /// Shut down from outside (drain, shutdown grace expired).
    Cancelled,
}

impl RelayEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle_timeout",
            RelayEnd::Error => "reset",
            RelayEnd::Cancelled => "cancelled",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct RelayStats {
    /// Client → upstream.
    pub up: u64,
    /// Upstream → client.
    pub down: u64,
    pub end: RelayEnd,
}

struct Shared {
    start: Instant,
    last: AtomicU64,
}

impl Shared {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Counts bytes read through a stream and records activity.
struct Counted<S> {
    inner: S,
    bytes: u64,
    shared: Arc<Shared>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.bytes += n as u64;
            self.shared.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways until both sides close, either errors, the connection is
/// idle for `idle`, or `cancel` resolves.
pub async fn relay<A, B>(
    client: A,
    upstream: B,
    idle: Duration,
    cancel: impl std::future::Future<Output = ()>,
) -> RelayStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Arc::new(Shared {
        start: Instant::now(),
        last: AtomicU64::new(0),
    });
    let mut a = Counted {
        inner: client,
        bytes: 0,
        shared: shared.clone(),
    };
    let mut b = Counted {
        inner: upstream,
        bytes: 0,
        shared: shared.clone(),
    };
    let idle_watch = async {
        loop {
            let last = Duration::from_millis(shared.last.load(Ordering::Relaxed));
            let deadline = last + idle;
            let now = shared.start.elapsed();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(deadline - now).await;
        }
    };
    let end = {
        let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024);
        tokio::select! {
            r = copy => if r.is_ok() { RelayEnd::Closed } else { RelayEnd::Error },
            _ = idle_watch => RelayEnd::Idle,
            _ = cancel => RelayEnd::Cancelled,
        }
    };
    RelayStats {
        up: a.bytes,
        down: b.bytes,
        end,
    }
}
