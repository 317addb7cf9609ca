//! `proxyguard serve`: bind every listener, run until SIGINT/SIGTERM, then
//! stop accepting and let live tunnels finish within the grace period.

use std::sync::Arc;

use crate::config::Config;
use crate::inbound::{self, State};
use crate::route::Router;
use crate::shutdown::Shutdown;

/// Errors that stop `serve` from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A running gateway (listeners bound).
pub struct Running {
    pub state: Arc<State>,
    pub addrs: Vec<std::net::SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: std::time::Duration,
}

/// Binds all listeners and starts serving in the background.
pub async fn start(cfg: &Config, shutdown: Shutdown) -> Result<Running, ServeError> {
    crate::upstream::tls::ensure_provider();
    let router = Arc::new(Router::new(cfg));
    let state = Arc::new(State::new(cfg, router.clone(), shutdown.clone()));
    crate::pool::checker::spawn(
        router,
        cfg.file.health.clone(),
        cfg.file.pool.checks,
        shutdown,
    );
    let mut tasks = Vec::new();
    let mut addrs = Vec::new();
    for l in &cfg.listeners {
        let listener = inbound::bind(l.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: l.addr,
                source,
            })?;
        let local = listener.local_addr().unwrap_or(l.addr);
        addrs.push(local);
        tracing::info!(addr = %local, protocol = ?l.protocol, "listening");
        tasks.push(tokio::spawn(inbound::serve_listener(
            listener,
            l.protocol,
            state.clone(),
        )));
    }
    for u in &cfg.upstreams {
        tracing::info!(
            upstream = %u.spec.name,
            url = %u.spec.redacted_url(),
            origin = %u.origin,
            plain = u.applies.plain,
            tunnel = u.applies.tunnel,
            "upstream"
        );
    }
    if cfg.upstreams.is_empty() {
        tracing::info!("no upstreams configured: connecting directly");
    }
    Ok(Running {
        state,
        addrs,
        tasks,
        grace: cfg.shutdown_grace,
    })
}

impl Running {
    /// Stops accepting and waits for live connections up to the grace period.
    pub async fn stop(self) {
        let sd = self.state.shutdown.clone();
        sd.trigger();
        for t in self.tasks {
            let _ = t.await;
        }
        let left = sd.drain(self.grace).await;
        if left > 0 {
            tracing::warn!(
                connections = left,
                "grace period over; closing remaining connections"
            );
        } else {
            tracing::info!("all connections finished");
        }
    }
}

/// Waits for SIGINT or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs the gateway until a signal arrives.
pub async fn run(cfg: Config) -> Result<(), ServeError> {
    let running = start(&cfg, Shutdown::new()).await?;
    wait_for_signal().await;
    tracing::info!(
        "shutting down: no new connections; live tunnels have {:?}",
        cfg.shutdown_grace
    );
    running.stop().await;
    Ok(())
}
