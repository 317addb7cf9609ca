//! Bidirectional byte relay for tunnels, with an idle timeout and byte counts
//! (for the access log and metrics).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

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
    /// The client sent bytes into a fresh tunnel and the upstream sent
    /// nothing back within the first-answer limit (see [`FIRST_ANSWER`]).
    NoAnswer,
}

impl RelayEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle_timeout",
            RelayEnd::Error => "reset",
            RelayEnd::Cancelled => "cancelled",
            RelayEnd::NoAnswer => "no_answer",
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

pub mod framing;
mod tcp;
pub use tcp::relay_tcp;

tokio::task_local! {
    /// Set by the caller of a relay (inbound/tunnel.rs) around a fresh
    /// tunnel through an upstream: once the client has sent bytes, the
    /// upstream must send something back within this long, or the relay
    /// ends with [`RelayEnd::NoAnswer`]. Unset or `None`: no limit (a
    /// server-speaks-first protocol is never affected: it answers first).
    pub static FIRST_ANSWER: Option<Duration>;
}

/// The first-answer limit of the relay running in this task.
fn first_answer_limit() -> Option<Duration> {
    FIRST_ANSWER.try_with(|d| *d).ok().flatten()
}

/// Which way bytes moved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
}

/// Activity clock shared by both directions of one tunnel.
struct Shared {
    start: Instant,
    last: AtomicU64,
    /// When the client's first byte went up (ms since `start`, plus one;
    /// 0: not yet).
    first_up: AtomicU64,
    first_up_seen: tokio::sync::Notify,
    answered: AtomicBool,
}

impl Shared {
    fn new() -> Self {
        Shared {
            start: Instant::now(),
            last: AtomicU64::new(0),
            first_up: AtomicU64::new(0),
            first_up_seen: tokio::sync::Notify::new(),
            answered: AtomicBool::new(false),
        }
    }

    fn touch(&self, dir: Dir) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
        match dir {
            Dir::Down => self.answered.store(true, Ordering::Relaxed),
            Dir::Up => {
                let first = self.first_up.compare_exchange(
                    0,
                    now + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                if first.is_ok() {
                    self.first_up_seen.notify_one();
                }
            }
        }
    }

    /// Resolves once the client sent bytes and the upstream sent nothing
    /// back for `limit` after; never when the upstream answered first.
    async fn answer_watch(&self, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        if self.first_up.load(Ordering::Relaxed) == 0 {
            self.first_up_seen.notified().await;
        }
        let at = Duration::from_millis(self.first_up.load(Ordering::Relaxed).saturating_sub(1));
        let wait = (at + limit).saturating_sub(self.start.elapsed());
        tokio::time::sleep(wait).await;
        if self.answered.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
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
    /// Which way what is read from here goes.
    dir: Dir,
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
            self.shared.touch(self.dir);
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
/// idle for `idle`, the upstream does not answer in time ([`FIRST_ANSWER`])
/// or `cancel` resolves.
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
        dir: Dir::Up,
    };
    let mut b = Counted {
        inner: upstream,
        bytes: 0,
        shared: shared.clone(),
        dir: Dir::Down,
    };
    let end = {
        let (ar, aw) = tokio::io::split(&mut a);
        let (br, bw) = tokio::io::split(&mut b);
        let copy = async { tokio::try_join!(pump(ar, bw), pump(br, aw)) };
        tokio::select! {
            r = copy => if r.is_ok() { RelayEnd::Closed } else { RelayEnd::Error },
            _ = shared.idle_watch(idle) => RelayEnd::Idle,
            _ = shared.answer_watch(first_answer_limit()) => RelayEnd::NoAnswer,
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
            let mut stats = if early > 0 {
                // The upstream spoke already: no first-answer limit.
                FIRST_ANSWER
                    .scope(None, relay_tcp(client, &mut upstream, idle, cancel))
                    .await
            } else {
                relay_tcp(client, &mut upstream, idle, cancel).await
            };
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Relays a duplex pair under a 3 s first-answer limit; `answer`: the
    /// stub upstream's reply to the client's first bytes (None: silence).
    async fn run(client_sends: bool, answer: Option<&'static [u8]>) -> RelayStats {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (upstream, mut upstream_far) = tokio::io::duplex(1024);
        let stub = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            if client_sends {
                client_far.write_all(b"hello").await.unwrap();
            }
            let n = upstream_far.read(&mut buf).await.unwrap_or(0);
            if let (Some(a), true) = (answer, n > 0) {
                upstream_far.write_all(a).await.unwrap();
            }
            // Keep both far ends open until the relay ends.
            let _ = client_far.read(&mut buf).await;
            let _ = upstream_far.read(&mut buf).await;
        });
        let relayed = relay(
            client,
            upstream,
            Duration::from_secs(60),
            std::future::pending::<()>(),
        );
        let stats = FIRST_ANSWER
            .scope(Some(Duration::from_secs(3)), relayed)
            .await;
        stub.abort();
        stats
    }

    #[tokio::test(start_paused = true)]
    async fn silent_upstream_after_client_bytes_ends_with_no_answer() {
        let t0 = Instant::now();
        let stats = run(true, None).await;
        assert_eq!(stats.end, RelayEnd::NoAnswer);
        assert_eq!((stats.up, stats.down), (5, 0));
        assert_eq!(t0.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_or_a_quiet_client_is_never_cut_early() {
        // The upstream answered: only the idle timeout ends it.
        let stats = run(true, Some(b"world")).await;
        assert_eq!(stats.end, RelayEnd::Idle);
        assert_eq!((stats.up, stats.down), (5, 5));
        // The client sent nothing (server-speaks-first, or just idle).
        let stats = run(false, None).await;
        assert_eq!(stats.end, RelayEnd::Idle);
    }
}
