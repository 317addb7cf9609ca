//! A client's tunnel (CONNECT, SOCKS5, an upgraded request) once both sides
//! are open: relayed until either side closes, the idle timeout passes, the
//! shutdown grace period ends or (with `pool.drain_on_eject`) its upstream is
//! ejected; counted while it lives and logged as one access line.

use std::fmt::Display;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use super::{ConnCtx, Gateway, GaugeGuard};
use crate::relay::{RelayEnd, RelayStats, Watch};
use crate::route::NextHop;
use crate::upstream::Target;

/// Resolves when a live tunnel must end early.
pub type Cancel = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What ends a live tunnel early: the end of the shutdown grace period and,
/// with `pool.drain_on_eject`, the ejection of its upstream.
pub fn cancel(state: &Gateway, route: &NextHop) -> Cancel {
    let drain = match route {
        NextHop::Upstream(m) if state.router.pool.config().drain_on_eject => Some(m.clone()),
        _ => None,
    };
    let shutdown = state.shutdown.clone();
    Box::pin(async move {
        let ejected = async {
            match drain {
                Some(m) => m.health.ejection().await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = ejected => {}
            _ = shutdown.expired() => {}
        }
    })
}

/// One tunnel, as its access line names it.
pub struct Tunnel<'a> {
    /// `connect`, `socks5` or `upgrade`.
    pub kind: &'static str,
    pub peer: SocketAddr,
    pub target: &'a Target,
    pub route: &'a NextHop,
    pub started: Instant,
}

impl Tunnel<'_> {
    /// Relays with `relay` (given what watches the tunnel and what cancels
    /// it), counted in `proxyguard_tunnels_active` meanwhile; then writes
    /// the access line.
    ///
    /// A CONNECT or SOCKS5 tunnel through an upstream is watched
    /// ([`Watch`]): the far side must answer the client's first bytes
    /// within `[timeouts] response_head` (a TLS server always answers a
    /// ClientHello; a server-speaks-first protocol answers before the client
    /// sends), and where its messages can be followed (TLS records, HTTP/1
    /// responses) it must not close inside one or fall silent inside one for
    /// `[timeouts] body_idle`. A tunnel ended so is closed and the upstream
    /// becomes a suspect for the target: later tunnels try the others first,
    /// and once another upstream's tunnel to the target is answered the
    /// fault counts against it (max_fails ejects it); if another fails the
    /// same way, the target is at fault and nobody is counted.
    pub async fn run<F, Fut>(&self, state: &Gateway, relay: F)
    where
        F: FnOnce(Watch, Cancel) -> Fut,
        Fut: Future<Output = RelayStats>,
    {
        let cancel = cancel(state, self.route);
        let _active = GaugeGuard::new("proxyguard_tunnels_active");
        let timeouts = &state.router.ctx.timeouts;
        let watch = match (self.kind, self.route) {
            ("connect" | "socks5", NextHop::Upstream(_)) => Watch {
                idle: state.idle_timeout,
                first_answer: Some(timeouts.response_head),
                body_idle: timeouts.body_idle,
            },
            _ => Watch::idle(state.idle_timeout),
        };
        let stats = relay(watch, cancel).await;
        if let NextHop::Upstream(m) = self.route {
            self.judge(state, m, &stats);
        }
        self.log(&stats);
    }

    /// Reports a watched end as a suspected fault of `m` for the target,
    /// and an answered tunnel as a delivery (pool/body_suspects.rs).
    fn judge(&self, state: &Gateway, m: &Arc<crate::pool::Member>, stats: &RelayStats) {
        let suspects = &state.router.body_suspects;
        match stats.end {
            RelayEnd::NoAnswer | RelayEnd::Cut | RelayEnd::Stalled => {
                // Alone it cannot tell a broken upstream from a broken
                // origin: a suspect (put last for this target) until
                // another upstream's tunnel to it is answered.
                let verdict = suspects.fault(m, self.target);
                tracing::warn!(
                    upstream = m.name(),
                    target = %self.target,
                    end = stats.end.as_str(),
                    bytes_down = stats.down,
                    ?verdict,
                    "the tunnel's far side failed inside an exchange: closed"
                );
            }
            _ if stats.down > 0 => suspects.completed(m, self.target),
            _ => {}
        }
    }

    fn log(&self, stats: &RelayStats) {
        let kind = self.kind;
        metrics::counter!("proxyguard_tunnels_total", "kind" => kind, "outcome" => stats.end.as_str()).increment(1);
        metrics::counter!("proxyguard_bytes_total", "direction" => "up").increment(stats.up);
        metrics::counter!("proxyguard_bytes_total", "direction" => "down").increment(stats.down);
        tracing::info!(
            target: "access",
            kind,
            client = %self.peer,
            target = %self.target,
            upstream = self.route.name(),
            bytes_up = stats.up,
            bytes_down = stats.down,
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome = stats.end.as_str(),
            "tunnel"
        );
    }
}

/// Runs a tunnel in a task of its own: once `client_side` gives the
/// client's stream, `then` relays it. The task holds the client
/// connection's slot and keeps shutdown's drain waiting until it ends.
pub fn spawn<T, E, R, F, Fut>(ctx: Arc<ConnCtx>, state: &Gateway, client_side: R, then: F)
where
    R: Future<Output = Result<T, E>> + Send + 'static,
    T: Send,
    E: Display + Send,
    F: FnOnce(T) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let live = state.shutdown.live();
    tokio::spawn(async move {
        let _slot = ctx.slot.clone();
        match client_side.await {
            // Boxed: the relay's future (buffers, watch state) is large,
            // and the task's future is moved into its cell by spawn and
            // rewritten when it ends; this way it is copied once.
            Ok(client) => Box::pin(then(client)).await,
            Err(e) => {
                tracing::debug!(client = %ctx.peer, error = %e, "the client's side of the tunnel did not open")
            }
        }
        drop(live);
    });
}
