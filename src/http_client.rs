//! The one HTTP client: the HTTP/1.1 or HTTP/2 handshake on an established
//! connection (whatever the connector opened: direct, tunnel, proxy, TLS)
//! with its connection task spawned, the pool of idle HTTP/1.1 keep-alive
//! connections, and the shared HTTP/2 connections (one per key, carrying
//! many requests at once).
//!
//! Pooled connections are keyed by pool member identity (`Member::id`), not
//! by name: after a reload changes an upstream, its old sockets are never
//! handed to requests for the new one. The pool is bounded in total, and a
//! sweeper drops expired and closed connections (and empty keys) in the
//! background, so idle memory returns to nothing when traffic stops.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::body::BoxError;

/// A connection the client can speak HTTP on (TCP, a tunnel, TLS…).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A request body the client can send: what hyper's handshakes ask of it.
pub trait SendBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}
impl<B> SendBody for B where B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static {}

/// HTTP/1.1 handshake on `io`; the connection is driven by a spawned task
/// that ends when the connection closes or every sender is dropped.
pub async fn handshake<I: Io, B: SendBody>(io: I) -> Result<SendRequest<B>, hyper::Error> {
    handshake_h1(io, false).await
}

/// HTTP/2 handshake (prior knowledge, or after ALPN chose `h2`) on `io`;
/// the returned sender is cheap to clone and shares the connection.
pub async fn handshake_h2<I: Io, B: SendBody + Unpin>(
    io: I,
) -> Result<http2::SendRequest<B>, hyper::Error> {
    let (tx, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30))
        .handshake::<_, B>(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::trace!(error = %e, "upstream h2 connection ended");
        }
    });
    Ok(tx)
}

/// Like [`handshake`], for a request that may be answered `101 Switching
/// Protocols`: the connection task hands the socket over to
/// `hyper::upgrade::on(response)` instead of closing it. Never pooled.
pub async fn handshake_with_upgrades<I: Io, B: SendBody>(
    io: I,
) -> Result<SendRequest<B>, hyper::Error> {
    handshake_h1(io, true).await
}

async fn handshake_h1<I: Io, B: SendBody>(
    io: I,
    upgrades: bool,
) -> Result<SendRequest<B>, hyper::Error> {
    let (tx, conn) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, B>(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        let r = if upgrades {
            conn.with_upgrades().await
        } else {
            conn.await
        };
        if let Err(e) = r {
            tracing::trace!(error = %e, "upstream connection ended");
        }
    });
    Ok(tx)
}

/// A connection to send one request on, by protocol.
pub enum Sender<B> {
    H1(SendRequest<B>),
    H2(http2::SendRequest<B>),
}

impl<B: SendBody + Unpin> Sender<B> {
    /// Sends `req` once the connection is ready for it.
    pub async fn send(
        &mut self,
        req: http::Request<B>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(tx) => {
                tx.ready().await?;
                tx.send_request(req).await
            }
            Sender::H2(tx) => {
                tx.ready().await?;
                tx.send_request(req).await
            }
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self, Sender::H2(_))
    }
}

impl<B: Body + Send + 'static> Reusable for http2::SendRequest<B> {
    fn usable(&self) -> bool {
        !self.is_closed()
    }
}

/// Shared (multiplexed) connections: at most one per key, handed out as
/// clones while it is open.
pub struct SharedConns<K, C> {
    map: Mutex<HashMap<K, C>>,
}

impl<K: Hash + Eq, C: Reusable + Clone> SharedConns<K, C> {
    pub fn new() -> Self {
        SharedConns {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, C>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The open connection for `key`, if any (a closed one is dropped).
    pub fn get(&self, key: &K) -> Option<C> {
        let mut g = self.lock();
        match g.get(key) {
            Some(c) if c.usable() => Some(c.clone()),
            Some(_) => {
                g.remove(key);
                None
            }
            None => None,
        }
    }

    /// Makes `conn` the shared connection for `key`.
    pub fn put(&self, key: K, conn: C) {
        self.lock().insert(key, conn);
    }

    /// Forgets the connection for `key` (it failed).
    pub fn remove(&self, key: &K) {
        self.lock().remove(key);
    }

    /// Connections held now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq, C: Reusable + Clone> Default for SharedConns<K, C> {
    fn default() -> Self {
        Self::new()
    }
}

/// Opens a direct connection to an `http://` or `https://` URL's host
/// (TLS verified against the platform roots) and does the handshake. For
/// proxyguard's own outbound calls: alert webhooks, the status CLI.
pub async fn connect_url<B: SendBody>(
    url: &url::Url,
    ctx: &crate::upstream::ConnectContext,
) -> Result<SendRequest<B>, String> {
    use crate::upstream::{tcp_connect, Host, NoopObserver};
    let host = match url.host() {
        Some(url::Host::Domain(d)) => Host::Name(d.to_ascii_lowercase()),
        Some(url::Host::Ipv4(ip)) => Host::Ip(ip.into()),
        Some(url::Host::Ipv6(ip)) => Host::Ip(ip.into()),
        None => return Err("URL without host".into()),
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let tcp = tcp_connect(ctx, &host, port, false, &mut NoopObserver)
        .await
        .map_err(|e| e.to_string())?;
    match url.scheme() {
        "http" => handshake(tcp).await.map_err(|e| e.to_string()),
        "https" => {
            let name = rustls_pki_types::ServerName::try_from(host.bare())
                .map_err(|e| format!("bad TLS server name: {e}"))?;
            let tls = tokio_rustls::TlsConnector::from(ctx.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", host.bare()))?;
            handshake(tls).await.map_err(|e| e.to_string())
        }
        other => Err(format!("unsupported scheme {other}://")),
    }
}

/// Something that may be kept idle and handed out again.
pub trait Reusable: Send + 'static {
    /// Still open and ready for a request.
    fn usable(&self) -> bool;
}

impl<B: Body + Send + 'static> Reusable for SendRequest<B> {
    fn usable(&self) -> bool {
        self.is_ready() && !self.is_closed()
    }
}

struct Entry<C> {
    conn: C,
    since: Instant,
}

struct Inner<K, C> {
    map: HashMap<K, Vec<Entry<C>>>,
    total: usize,
}

/// Idle keep-alive connections by key.
pub struct IdlePool<K, C> {
    inner: Arc<Mutex<Inner<K, C>>>,
    per_key: usize,
    max_total: usize,
    idle_timeout: Duration,
    sweeper: std::sync::Once,
}

impl<K, C> IdlePool<K, C>
where
    K: Hash + Eq + Clone + Send + 'static,
    C: Reusable,
{
    pub fn new(per_key: usize, max_total: usize, idle_timeout: Duration) -> Self {
        IdlePool {
            inner: Arc::new(Mutex::new(Inner {
                map: HashMap::new(),
                total: 0,
            })),
            per_key,
            max_total,
            idle_timeout,
            sweeper: std::sync::Once::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, C>> {
        // Only plain collections inside: a panic elsewhere leaves them usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used live connection for `key`.
    pub fn checkout(&self, key: &K) -> Option<C> {
        self.checkout_within(key, self.idle_timeout).map(|(c, _)| c)
    }

    /// The most recently used live connection for `key` idle for less than
    /// `max_idle` (and the pool's own timeout), with how long it was idle.
    /// Older ones for `key` are dropped: nobody else may use them.
    pub fn checkout_within(&self, key: &K, max_idle: Duration) -> Option<(C, Duration)> {
        let max_idle = max_idle.min(self.idle_timeout);
        let mut g = self.lock();
        let inner = &mut *g;
        let list = inner.map.get_mut(key)?;
        let mut found = None;
        while let Some(e) = list.pop() {
            inner.total -= 1;
            let age = e.since.elapsed();
            if age < max_idle && e.conn.usable() {
                found = Some((e.conn, age));
                break;
            }
        }
        if list.is_empty() {
            inner.map.remove(key);
        }
        found
    }

    /// Keeps `conn` for reuse unless the key or the pool is full.
    pub fn checkin(&self, key: K, conn: C) {
        self.start_sweeper();
        let mut g = self.lock();
        if g.total >= self.max_total {
            return;
        }
        let list = g.map.entry(key).or_default();
        if list.len() >= self.per_key {
            return;
        }
        list.push(Entry {
            conn,
            since: Instant::now(),
        });
        g.total += 1;
    }

    /// Drops every connection whose key matches.
    pub fn evict(&self, mut pred: impl FnMut(&K) -> bool) {
        let mut g = self.lock();
        let inner = &mut *g;
        inner.map.retain(|k, list| {
            if pred(k) {
                inner.total -= list.len();
                false
            } else {
                true
            }
        });
    }

    /// Drops expired and closed connections, and keys left empty.
    pub fn sweep(&self) {
        sweep(&self.inner, self.idle_timeout);
    }

    /// Idle connections held now.
    pub fn len(&self) -> usize {
        self.lock().total
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys held now.
    pub fn keys(&self) -> usize {
        self.lock().map.len()
    }

    fn start_sweeper(&self) {
        let weak: Weak<Mutex<Inner<K, C>>> = Arc::downgrade(&self.inner);
        let every =
            (self.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(10));
        let timeout = self.idle_timeout;
        self.sweeper.call_once(|| {
            if tokio::runtime::Handle::try_current().is_err() {
                return;
            }
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(inner) = weak.upgrade() else { return };
                    sweep(&inner, timeout);
                }
            });
        });
    }
}

fn sweep<K: Hash + Eq, C: Reusable>(inner: &Mutex<Inner<K, C>>, timeout: Duration) {
    let mut g = inner.lock().unwrap_or_else(|e| e.into_inner());
    let inner = &mut *g;
    let mut total = 0;
    inner.map.retain(|_, list| {
        list.retain(|e| e.since.elapsed() < timeout && e.conn.usable());
        total += list.len();
        !list.is_empty()
    });
    inner.total = total;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    struct Stub(Arc<AtomicBool>);
    impl Reusable for Stub {
        fn usable(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn open() -> Stub {
        Stub(Arc::new(AtomicBool::new(true)))
    }

    #[tokio::test(start_paused = true)]
    async fn thousands_of_targets_then_idle_leaves_nothing() {
        let pool: IdlePool<u32, Stub> = IdlePool::new(4, 100_000, Duration::from_secs(2));
        for k in 0..5000 {
            pool.checkin(k, open());
        }
        assert_eq!((pool.len(), pool.keys()), (5000, 5000));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!((pool.len(), pool.keys()), (0, 0), "the sweeper emptied it");
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_per_key_and_in_total() {
        let pool: IdlePool<u32, Stub> = IdlePool::new(2, 3, Duration::from_secs(60));
        for _ in 0..5 {
            pool.checkin(1, open());
        }
        assert_eq!(pool.len(), 2);
        pool.checkin(2, open());
        pool.checkin(3, open());
        assert_eq!(pool.len(), 3, "total cap");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_and_expired_are_never_handed_out() {
        let pool: IdlePool<u32, Stub> = IdlePool::new(4, 100, Duration::from_secs(5));
        let closed = open();
        closed.0.store(false, Ordering::Relaxed);
        pool.checkin(1, closed);
        assert!(pool.checkout(&1).is_none());
        assert_eq!(pool.keys(), 0, "empty key removed");
        pool.checkin(1, open());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(pool.checkout(&1).is_none());
        pool.checkin(1, open());
        assert!(pool.checkout(&1).is_some());
    }

    #[derive(Clone)]
    struct SharedStub(Arc<AtomicBool>);
    impl Reusable for SharedStub {
        fn usable(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn shared_connection_is_cloned_until_it_closes() {
        let conns: SharedConns<u32, SharedStub> = SharedConns::new();
        let flag = Arc::new(AtomicBool::new(true));
        conns.put(1, SharedStub(flag.clone()));
        assert!(conns.get(&1).is_some());
        assert!(conns.get(&1).is_some(), "still there: shared, not taken");
        flag.store(false, Ordering::Relaxed);
        assert!(conns.get(&1).is_none());
        assert!(conns.is_empty(), "a closed one is dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn checkout_within_a_shorter_limit_reports_the_age() {
        let pool: IdlePool<u32, Stub> = IdlePool::new(4, 100, Duration::from_secs(60));
        pool.checkin(1, open());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (_, age) = pool
            .checkout_within(&1, Duration::from_secs(5))
            .expect("younger than 5s");
        assert_eq!(age, Duration::from_secs(3));
        pool.checkin(1, open());
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(pool.checkout_within(&1, Duration::from_secs(2)).is_none());
        assert_eq!(pool.len(), 0, "the too-old connection was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn evict_by_key() {
        let pool: IdlePool<(u64, u8), Stub> = IdlePool::new(4, 100, Duration::from_secs(60));
        pool.checkin((1, 0), open());
        pool.checkin((1, 1), open());
        pool.checkin((2, 0), open());
        pool.evict(|k| k.0 == 1);
        assert_eq!(pool.len(), 1);
    }
}
