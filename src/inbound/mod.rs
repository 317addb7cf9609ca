//! Inbound listeners: accept, admission, protocol detection, dispatch.

pub mod admission;
pub mod bans;
pub mod http;
pub mod limits;
pub mod socks5;
pub mod tunnel;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::config::schema::Protocol;
use crate::config::Config;
use crate::forward::Forwarder;
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::tls_acceptor::{HandshakeError, ServerTls, TLS_HANDSHAKE_BYTE};

pub use admission::Admission;

use crate::acl::{Acl, AclRules, SelfAddrs};

/// Increments a gauge for as long as it lives.
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    pub fn new(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// Everything a client connection needs, shared by all listeners.
pub struct Gateway {
    pub router: Arc<Router>,
    pub admission: Admission,
    pub forwarder: Forwarder,
    pub shutdown: Shutdown,
    pub client_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    /// SO_KEEPALIVE on accepted client sockets.
    pub tcp_keepalive: Option<crate::tcp_keepalive::TcpKeepalive>,
    /// Connection slots (global and per client), shared by all listeners.
    pub limits: Arc<limits::Limits>,
    /// Brute-force bans on inbound credentials.
    pub bans: Arc<bans::Bans>,
    /// `[acl]` as configured; each listener derives its own [`Acl`].
    pub acl_rules: AclRules,
    /// Our own listeners and admin address: never a destination.
    pub own: Arc<SelfAddrs>,
}

/// What one client connection carries besides its socket.
pub struct ConnCtx {
    pub peer: SocketAddr,
    /// Held by the connection and by any tunnel it becomes.
    pub slot: Arc<limits::Slot>,
    pub acl: Arc<Acl>,
}

impl Gateway {
    pub fn new(cfg: &Config, router: Arc<Router>, shutdown: Shutdown) -> Self {
        Gateway {
            router,
            admission: Admission::new(&cfg.admission),
            forwarder: Forwarder::new(
                cfg.pool.idle_per_host,
                cfg.pool.idle_timeout.0,
                cfg.pool.upstream_idle.0,
                cfg.via,
                cfg.expect_continue,
            ),
            shutdown,
            client_header_timeout: cfg.client_header_timeout,
            idle_timeout: cfg.idle_timeout,
            max_header_bytes: cfg.max_header_bytes,
            tcp_keepalive: cfg.timeouts.tcp_keepalive,
            limits: limits::Limits::new(
                cfg.max_connections,
                cfg.security.max_connections_per_client,
            ),
            bans: Arc::new(bans::Bans::new(cfg.security.bans)),
            acl_rules: cfg.security.acl.clone(),
            own: Arc::new(SelfAddrs::default()),
        }
    }
}

/// Binds a listener (errors name the address).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    defer_accept(&sock);
    sock.listen(1024)
}

/// Every protocol we serve (HTTP, SOCKS5) has the client speak first, so the
/// kernel may hand over a connection only once its first bytes arrived:
/// one wake-up and one empty read less per connection (~+8 % fresh tunnels/s
/// measured together with the skipped second shutdown). One second, so a
/// silent client is still accepted after the first SYN-ACK retransmit and
/// then closed by `client_header` as before. Best effort.
#[cfg(target_os = "linux")]
fn defer_accept(sock: &tokio::net::TcpSocket) {
    use std::os::fd::AsRawFd;
    let secs: libc::c_int = 1;
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            &secs as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn defer_accept(_sock: &tokio::net::TcpSocket) {}

/// Accepts connections until shutdown. `tls` is the certificate of an
/// `https` listener, or of a `mixed` one that accepts TLS as well.
pub async fn serve_listener(
    listener: TcpListener,
    protocol: Protocol,
    tls: Option<Arc<ServerTls>>,
    state: Arc<Gateway>,
) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    state.own.add(local);
    state.limits.spawn_trimmer(state.shutdown.clone());
    let acl = Arc::new(Acl::new(&state.acl_rules, local, state.own.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = state.shutdown.triggered() => return,
        };
        if !state.admission.peer_allowed(peer.ip()) {
            tracing::warn!(client = %peer, "client not in allow-list; closed");
            continue;
        }
        let slot = tokio::select! {
            s = state.limits.admit(peer.ip()) => match s {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    metrics::counter!("proxyguard_connections_refused_total", "reason" => "per_client").increment(1);
                    tracing::warn!(client = %peer, error = %e, "connection refused");
                    continue;
                }
            },
            _ = state.shutdown.triggered() => return,
        };
        let _ = stream.set_nodelay(true);
        crate::tcp_keepalive::apply(state.tcp_keepalive, &stream);
        let state = state.clone();
        let live = state.shutdown.live();
        let ctx = Arc::new(ConnCtx {
            peer,
            slot,
            acl: acl.clone(),
        });
        let tls = tls.clone();
        tokio::spawn(async move {
            let _g = GaugeGuard::new("proxyguard_client_connections_active");
            metrics::counter!("proxyguard_client_connections_total").increment(1);
            use tracing::Instrument;
            let slot = ctx.slot.clone();
            tokio::select! {
                _ = handle(stream, ctx, protocol, tls, state)
                    .instrument(tracing::info_span!("conn", client = %peer)) => {}
                _ = slot.shed() => {
                    tracing::debug!(client = %peer, "shed: no request yet and the connection limit is reached");
                }
            }
            drop(live);
        });
    }
}

/// What a connection turned out to speak.
enum Speaks {
    Http,
    Socks5,
    Tls,
}

async fn handle(
    stream: TcpStream,
    ctx: Arc<ConnCtx>,
    protocol: Protocol,
    tls: Option<Arc<ServerTls>>,
    state: Arc<Gateway>,
) {
    let peer = ctx.peer;
    let speaks = match protocol {
        Protocol::Http => Speaks::Http,
        Protocol::Socks5 => Speaks::Socks5,
        Protocol::Https => Speaks::Tls,
        Protocol::Mixed => {
            let mut b = [0u8; 1];
            match tokio::time::timeout(state.client_header_timeout, stream.peek(&mut b)).await {
                Ok(Ok(1)) if b[0] == 0x05 => Speaks::Socks5,
                Ok(Ok(1)) if b[0] == TLS_HANDSHAKE_BYTE && tls.is_some() => Speaks::Tls,
                Ok(Ok(1)) => Speaks::Http,
                Ok(_) => return,
                Err(_) => {
                    tracing::info!(target: "access", client = %peer, outcome = "client_header_timeout", "no request");
                    return;
                }
            }
        }
    };
    // Every path's future is boxed: the connection's task future is copied
    // several times by spawn and again when it ends (tokio rewrites the
    // task's stage), so it stays small; the SOCKS5 and TLS ones are several
    // times the size of the plain HTTP one (~1 KiB).
    match (speaks, tls) {
        (Speaks::Socks5, _) => Box::pin(socks5::serve(stream, ctx, state)).await,
        (Speaks::Tls, Some(tls)) => {
            Box::pin(async move {
                match tls.accept(stream, state.client_header_timeout).await {
                    Ok(s) => http::serve(s, ctx, state).await,
                    Err(e) => tls_failed(peer, &e),
                }
            })
            .await
        }
        // Validation gives every https listener its certificate.
        (Speaks::Tls, None) => {}
        (Speaks::Http, _) => Box::pin(http::serve(stream, ctx, state)).await,
    }
}

/// A client's TLS handshake with us failed: the client's business (an
/// untrusted certificate, a plaintext client on a TLS port), counted and
/// logged, never blamed on an upstream.
fn tls_failed(peer: SocketAddr, e: &HandshakeError) {
    let reason = e.reason();
    metrics::counter!("proxyguard_tls_handshake_failures_total", "reason" => reason).increment(1);
    tracing::info!(
        target: "access",
        kind = "tls",
        client = %peer,
        outcome = "tls_handshake_failed",
        reason,
        error = %e,
        "TLS handshake with the client failed"
    );
}
