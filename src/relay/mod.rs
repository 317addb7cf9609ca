//! Bidirectional byte relay for tunnels, with an idle timeout and byte counts
//! (for the access log and metrics).
//!
//! A tunnel through an upstream proxy is also watched (see [`Watch`]): the
//! far side must answer the client's first bytes, and where its messages can
//! be followed ([`framing`]) it must not close or fall silent inside one.
//! Those ends are the only ones that can tell a broken upstream from an
//! origin that simply closed or is slow; the caller decides whom to blame.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

pub mod framing;
mod tcp;
pub use tcp::relay_tcp;

use framing::{Framing, Position};

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
    /// The client sent bytes into a fresh tunnel and the far side sent
    /// nothing back within [`Watch::first_answer`].
    NoAnswer,
    /// The far side closed or reset the tunnel inside a message (a TLS
    /// record or an HTTP response it had not finished).
    Cut,
    /// The far side sent nothing for [`Watch::body_idle`] inside a message
    /// while the relay was waiting for it (not for a slow client).
    Stalled,
}

impl RelayEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle_timeout",
            RelayEnd::Error => "reset",
            RelayEnd::Cancelled => "cancelled",
            RelayEnd::NoAnswer => "no_answer",
            RelayEnd::Cut => "cut",
            RelayEnd::Stalled => "stalled",
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

/// What ends a relay besides both sides closing and cancellation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Watch {
    /// No byte either way for this long ends the tunnel.
    pub idle: Duration,
    /// Once the client has sent bytes, the far side must send something
    /// back within this long ([`RelayEnd::NoAnswer`]). A server-speaks-first
    /// protocol is never affected: it answers first. Set for fresh tunnels
    /// through an upstream only.
    pub first_answer: Option<Duration>,
    /// Follow the far side's messages ([`framing`]): a close inside one is
    /// [`RelayEnd::Cut`], silence inside one for this long is
    /// [`RelayEnd::Stalled`]. Following keeps the bytes in user space, so
    /// it is set for tunnels through an upstream only.
    pub body_idle: Option<Duration>,
}

impl Watch {
    /// Only the idle timeout.
    pub fn idle(idle: Duration) -> Watch {
        Watch {
            idle,
            ..Watch::default()
        }
    }
}

/// Which way bytes moved.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Client → upstream.
    Up,
    /// Upstream → client.
    Down,
}

/// Activity clock and watch state shared by both directions of one tunnel.
struct Shared {
    start: Instant,
    /// Last byte either way (ms since `start`).
    last: AtomicU64,
    /// Last byte from the far side (ms since `start`).
    last_far: AtomicU64,
    /// When the client's first byte went up (ms since `start`, plus one;
    /// 0: not yet).
    first_up: AtomicU64,
    first_up_seen: tokio::sync::Notify,
    answered: AtomicBool,
    /// The far side's framing, when followed (boxed: most tunnels do not).
    framing: Option<Box<Mutex<Framing>>>,
    /// The framing says the far side is inside a message.
    inside: AtomicBool,
    /// The downward copy is waiting for the far side (not for the client).
    waiting_far: AtomicBool,
    /// The far side ended inside a message.
    cut: AtomicBool,
}

impl Shared {
    fn new(watch: &Watch) -> Self {
        Shared {
            start: Instant::now(),
            last: AtomicU64::new(0),
            last_far: AtomicU64::new(0),
            first_up: AtomicU64::new(0),
            first_up_seen: tokio::sync::Notify::new(),
            answered: AtomicBool::new(false),
            framing: watch
                .body_idle
                .map(|_| Box::new(Mutex::new(Framing::new()))),
            inside: AtomicBool::new(false),
            waiting_far: AtomicBool::new(false),
            cut: AtomicBool::new(false),
        }
    }

    fn framing(&self) -> Option<std::sync::MutexGuard<'_, Framing>> {
        let f = self.framing.as_ref()?;
        Some(f.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether bytes must still be shown to the framing.
    fn following(&self) -> bool {
        self.framing().is_some_and(|f| f.following())
    }

    /// Far-side bytes the framing only counts: they may be spliced.
    #[cfg(target_os = "linux")]
    fn far_opaque(&self) -> u64 {
        self.framing().map_or(0, |f| f.far_opaque())
    }

    /// `n` far-side bytes went down unseen (within [`Shared::far_opaque`]).
    #[cfg(target_os = "linux")]
    fn far_skipped(&self, n: u64) {
        self.seen(Dir::Down, &[]);
        if let Some(mut f) = self.framing() {
            f.far_skipped(n);
            let inside = f.position() == Position::Inside;
            self.inside.store(inside, Ordering::Relaxed);
        }
    }

    /// `bytes` moved `dir`.
    fn seen(&self, dir: Dir, bytes: &[u8]) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
        match dir {
            Dir::Down => {
                self.answered.store(true, Ordering::Relaxed);
                self.last_far.store(now, Ordering::Relaxed);
                if let Some(mut f) = self.framing().filter(|_| !bytes.is_empty()) {
                    f.far(bytes);
                    let inside = f.position() == Position::Inside;
                    self.inside.store(inside, Ordering::Relaxed);
                }
            }
            Dir::Up => {
                if let Some(mut f) = self.framing().filter(|_| !bytes.is_empty()) {
                    f.client(bytes);
                }
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

    /// Client bytes go by unseen from now on (the zero-copy path).
    fn client_unseen(&self) {
        if let Some(mut f) = self.framing() {
            f.client_unseen();
        }
    }

    /// The far side closed or failed: a cut if it was inside a message.
    fn far_ended(&self) -> bool {
        let cut = self.inside.load(Ordering::Relaxed);
        if cut {
            self.cut.store(true, Ordering::Relaxed);
        }
        cut
    }

    /// How the relay ended, a cut overriding what the copy saw.
    fn end(&self, seen: RelayEnd) -> RelayEnd {
        match seen {
            RelayEnd::Closed | RelayEnd::Error if self.cut.load(Ordering::Relaxed) => RelayEnd::Cut,
            other => other,
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

    /// Resolves once the far side, inside a message, sent nothing for
    /// `limit` while the relay waited for it. Time the relay spends waiting
    /// for a client that does not read is not the far side's stall.
    async fn stall_watch(&self, limit: Option<Duration>) {
        let Some(limit) = limit.filter(|_| self.framing.is_some()) else {
            return std::future::pending().await;
        };
        loop {
            let due = Duration::from_millis(self.last_far.load(Ordering::Relaxed)) + limit;
            let now = self.start.elapsed();
            if now < due {
                tokio::time::sleep(due - now).await;
            } else if self.inside.load(Ordering::Relaxed)
                && self.waiting_far.load(Ordering::Relaxed)
            {
                return;
            } else {
                tokio::time::sleep(limit).await;
            }
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

    /// Everything that ends a relay early, first one wins.
    async fn watch(&self, watch: &Watch) -> RelayEnd {
        tokio::select! {
            _ = self.idle_watch(watch.idle) => RelayEnd::Idle,
            _ = self.answer_watch(watch.first_answer) => RelayEnd::NoAnswer,
            _ = self.stall_watch(watch.body_idle) => RelayEnd::Stalled,
        }
    }
}

/// The error a cut turns into, so the copy ends at once.
fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the far side ended inside a message",
    )
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
        let far = self.dir == Dir::Down;
        if far {
            let waiting = r.is_pending();
            self.shared.waiting_far.store(waiting, Ordering::Relaxed);
        }
        match r {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n > 0 {
                    self.bytes += n as u64;
                    self.shared.seen(self.dir, &buf.filled()[before..]);
                } else if far && self.shared.far_ended() {
                    return Poll::Ready(Err(cut_error()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                if far {
                    self.shared.far_ended();
                }
                Poll::Ready(Err(e))
            }
            Poll::Pending => Poll::Pending,
        }
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

/// Copies both ways until both sides close, either errors, `watch` ends
/// the tunnel, or `cancel` resolves.
pub async fn relay<A, B>(
    client: A,
    upstream: B,
    watch: Watch,
    cancel: impl std::future::Future<Output = ()>,
) -> RelayStats
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let shared = Arc::new(Shared::new(&watch));
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
            end = shared.watch(&watch) => end,
            _ = cancel => RelayEnd::Cancelled,
        }
    };
    RelayStats {
        up: a.bytes,
        down: b.bytes,
        end: shared.end(end),
    }
}

/// Relays a client TCP socket and an upstream connection, taking the
/// zero-copy TCP path when the upstream is plain TCP (direct target, HTTP or
/// SOCKS5 proxy) and the generic path for TLS to an `https://` proxy.
pub async fn relay_conn(
    client: &mut tokio::net::TcpStream,
    conn: crate::upstream::conn::Conn,
    watch: Watch,
    cancel: impl std::future::Future<Output = ()>,
) -> RelayStats {
    use crate::upstream::conn::{Conn, Io};
    match conn.io {
        Io::Tcp(mut upstream) => {
            // Bytes the upstream sent right behind its handshake reply.
            let early = conn.prefix.as_deref().unwrap_or_default();
            if !early.is_empty()
                && tokio::io::AsyncWriteExt::write_all(client, early)
                    .await
                    .is_err()
            {
                return RelayStats {
                    up: 0,
                    down: 0,
                    end: RelayEnd::Error,
                };
            }
            relay_tcp(client, &mut upstream, watch, early, cancel).await
        }
        io => {
            let conn = Conn {
                io,
                prefix: conn.prefix,
            };
            relay(client, conn, watch, cancel).await
        }
    }
}

#[cfg(test)]
mod tests;
