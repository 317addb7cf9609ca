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

mod tcp;
pub use tcp::relay_tcp;

/// Activity clock shared by both directions of one tunnel.
struct Shared {
    start: Instant,
    last: AtomicU64,
}

impl Shared {
    fn new() -> Self {
        Shared {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing moved either way for `idle`.
    async fn idle_watch(&self, idle: Duration) {
        loop {
            let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
            let deadline = last + idle;
            let now = self.start.elapsed();
            if now >= deadline {
                return;
            }
            tokio::time::sleep(deadline - now).await;
        }
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

/// First buffer per direction: small, so an idle tunnel costs little memory.
const SMALL: usize = 1024;
/// Grown to this once a read fills the small buffer (bulk transfer).
const LARGE: usize = 256 * 1024;

/// Copies one direction until EOF, then half-closes the writer. The buffer
/// starts small and grows only when traffic needs it.
async fn pump<R, W>(mut r: R, mut w: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; SMALL];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        w.flush().await?;
        if n == buf.len() && buf.len() < LARGE {
            buf = vec![0u8; LARGE];
        }
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
    let shared = Arc::new(Shared::new());
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
    let end = {
        let (ar, aw) = tokio::io::split(&mut a);
        let (br, bw) = tokio::io::split(&mut b);
        let copy = async { tokio::try_join!(pump(ar, bw), pump(br, aw)) };
        tokio::select! {
            r = copy => if r.is_ok() { RelayEnd::Closed } else { RelayEnd::Error },
            _ = shared.idle_watch(idle) => RelayEnd::Idle,
            _ = cancel => RelayEnd::Cancelled,
        }
    };
    RelayStats {
        up: a.bytes,
        down: b.bytes,
        end,
    }
}

/// Relays a client TCP socket and an upstream connection, taking the
/// zero-copy TCP path when the upstream is plain TCP (direct target, HTTP or
/// SOCKS5 proxy) and the generic path for TLS to an `https://` proxy.
pub async fn relay_conn(
    client: &mut tokio::net::TcpStream,
    conn: crate::upstream::conn::Conn,
    idle: Duration,
    cancel: impl std::future::Future<Output = ()>,
) -> RelayStats {
    use crate::upstream::conn::{Conn, Io};
    match conn.io {
        Io::Tcp(mut upstream) => {
            // Bytes the upstream sent right behind its handshake reply.
            let early = conn.prefix.as_ref().map_or(0, |p| p.len() as u64);
            if let Some(p) = &conn.prefix {
                if tokio::io::AsyncWriteExt::write_all(client, p)
                    .await
                    .is_err()
                {
                    return RelayStats {
                        up: 0,
                        down: 0,
                        end: RelayEnd::Error,
                    };
                }
            }
            let mut stats = relay_tcp(client, &mut upstream, idle, cancel).await;
            stats.down += early;
            stats
        }
        io => {
            let conn = Conn {
                io,
                prefix: conn.prefix,
            };
            relay(client, conn, idle, cancel).await
        }
    }
}
