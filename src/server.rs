//! `proxyguard serve`: bind every listener, run until SIGINT/SIGTERM, then
//! stop accepting and let live tunnels finish within the grace period.

use std::sync::Arc;

use crate::config::Config;
use crate::inbound::{self, Gateway};
use crate::route::Router;

use crate::shutdown::Shutdown;
use crate::tls_acceptor::{reload_all, ServerTls, ALPN_HTTP11};

/// Errors that stop `serve` from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Route(String),
    #[error("listener {addr}: {source}")]
    Tls {
        addr: std::net::SocketAddr,
        source: crate::tls_acceptor::TlsSetupError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// A running gateway (listeners bound).
pub struct Running {
    pub state: Arc<Gateway>,
    pub addrs: Vec<std::net::SocketAddr>,
    pub admin: Option<std::net::SocketAddr>,
    pub routes: Vec<(std::net::SocketAddr, Arc<crate::reverse::ReverseRoute>)>,
    /// Certificates of the TLS listeners, re-read on reload.
    pub tls: Arc<Vec<Arc<ServerTls>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    grace: std::time::Duration,
}

/// Binds all listeners and starts serving in the background.
pub async fn start(cfg: &Config, shutdown: Shutdown) -> Result<Running, ServeError> {
    crate::upstream::tls::ensure_provider();
    let router = Arc::new(Router::new(cfg));
    let state = Arc::new(Gateway::new(cfg, router.clone(), shutdown.clone()));
    crate::pool::checker::spawn(
        router.clone(),
        cfg.health.clone(),
        cfg.pool.checks,
        shutdown.clone(),
    );
    crate::admin::alerts::spawn(cfg.alerts.clone(), router.clone(), shutdown.clone());
    let fleet = (cfg.fleet.as_ref())
        .map(|f| crate::fleet::spawn(f.clone(), router.clone(), shutdown.clone()));
    crate::discovery::start(cfg, router.clone(), shutdown.clone()).await;
    let routes =
        crate::reverse::start(cfg, router.clone(), shutdown.clone(), state.limits.clone()).await?;
    routes.iter().for_each(|(a, _)| state.own.add(*a));
    let Bound {
        mut tasks,
        addrs,
        tls: mut tls_all,
    } = bind_listeners(cfg, &state).await?;
    tasks.extend(fleet);
    tls_all.extend(routes.iter().filter_map(|(_, r)| r.server_tls()));
    let tls_all = Arc::new(tls_all);
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
    if cfg.upstreams.is_empty() && cfg.discovery.is_empty() {
        tracing::info!("no upstreams configured: connecting directly");
    }
    let mut admin_addr = None;
    if let Some(a) = cfg.admin_addr {
        let _ = crate::admin::metrics_handle();
        match inbound::bind(a).await {
            Ok(l) => {
                let local = l.local_addr().unwrap_or(a);
                admin_addr = Some(local);
                state.own.add(local);
                let path = cfg.path.clone();
                let r2 = router.clone();
                let started_with = Arc::new(cfg.clone());
                let certs = tls_all.clone();
                let reloader: Option<Arc<dyn Fn() -> Result<(), String> + Send + Sync>> =
                    path.clone().map(|p| {
                        Arc::new(move || {
                            reload_all(&certs);
                            reload(&r2, &p, &started_with)
                        })
                            as Arc<dyn Fn() -> Result<(), String> + Send + Sync>
                    });
                let admin = Arc::new(crate::admin::Admin {
                    router: router.clone(),
                    history: Default::default(),
                    started: std::time::Instant::now(),
                    listeners: addrs.iter().map(|a| a.to_string()).collect(),
                    token: cfg.admin_token.clone(),
                    config_path: path,
                    reloader,
                    routes: routes.clone(),
                    guard: crate::admin::guard::AdminGuard::new(
                        &cfg.security.admin_hosts,
                        state.bans.clone(),
                    ),
                });
                tracing::info!(addr = %local, "admin API: /, /status, /metrics, /healthz");
                tasks.push(tokio::spawn(crate::admin::serve(
                    l,
                    admin,
                    state.shutdown.clone(),
                )));
            }
            Err(source) => {
                // The default admin port may be taken (several instances on one
                // host): warn. One asked for (file or --admin) must work.
                if !cfg.admin_is_explicit() {
                    tracing::warn!(addr = %a, error = %source, "admin API not started: the default admin address {a} (port {}) is busy; choose one with --admin ADDR or [admin] addr, or --admin off", a.port());
                } else {
                    return Err(ServeError::Bind { addr: a, source });
                }
            }
        }
    }
    Ok(Running {
        state,
        addrs,
        admin: admin_addr,
        routes,
        tls: tls_all,
        tasks,
        grace: cfg.shutdown_grace,
    })
}

/// The forward listeners, bound and serving.
struct Bound {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    addrs: Vec<std::net::SocketAddr>,
    /// Certificates of the TLS listeners.
    tls: Vec<Arc<ServerTls>>,
}

async fn bind_listeners(cfg: &Config, state: &Arc<Gateway>) -> Result<Bound, ServeError> {
    let mut b = Bound {
        tasks: Vec::new(),
        addrs: Vec::new(),
        tls: Vec::new(),
    };
    for l in &cfg.listeners {
        let tls = match &l.tls {
            Some(files) => Some(
                ServerTls::load(files.clone(), ALPN_HTTP11).map_err(|source| ServeError::Tls {
                    addr: l.addr,
                    source,
                })?,
            ),
            None => None,
        };
        b.tls.extend(tls.clone());
        warn_clear_credentials(cfg, l);
        let listener = inbound::bind(l.addr)
            .await
            .map_err(|source| ServeError::Bind {
                addr: l.addr,
                source,
            })?;
        let local = listener.local_addr().unwrap_or(l.addr);
        b.addrs.push(local);
        tracing::info!(addr = %local, protocol = ?l.protocol, tls = l.tls.is_some(), "listening");
        b.tasks.push(tokio::spawn(inbound::serve_listener(
            listener,
            l.protocol,
            tls,
            state.clone(),
        )));
    }
    Ok(b)
}

/// Basic credentials (and SOCKS5 passwords) sent to a listener other
/// machines can reach travel in clear unless the listener speaks TLS.
fn warn_clear_credentials(cfg: &Config, l: &crate::config::Listener) {
    if !l.addr.ip().is_loopback() && !cfg.admission.users.is_empty() && l.tls.is_none() {
        tracing::warn!(
            addr = %l.addr,
            "listener {} is not loopback and [auth] users is set, but it has no TLS: clients' proxy credentials travel in clear; use protocol = \"https\" (or \"mixed\") with cert and key",
            l.addr
        );
    }
}

/// Sections a reload applies at once; every other one needs a restart.
const LIVE_SECTIONS: &[&str] = &["upstream", "pool", "breaker", "no_proxy", "bypass_loopback"];

/// The top-level sections whose new value differs from what the gateway
/// started with but that a reload cannot apply (listeners, admin, timeouts,
/// limits, auth, health, alerts, routes…): said in the log and the event.
pub fn needs_restart(started: &Config, new: &Config) -> Vec<String> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) = (
        serde_json::to_value(&started.as_read),
        serde_json::to_value(&new.as_read),
    ) else {
        return Vec::new();
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !LIVE_SECTIONS.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Re-reads the configuration file. An invalid file is rejected with the
/// error logged and the old configuration kept; unchanged upstreams keep
/// their health state and counters; live tunnels continue. Listener, admin
/// and timeout changes need a restart.
pub fn reload(router: &Router, path: &std::path::Path, started: &Config) -> Result<(), String> {
    match Config::from_file(path) {
        Err(e) => {
            metrics::counter!("proxyguard_config_reloads_total", "result" => "error").increment(1);
            tracing::error!(error = %e, "reload rejected; keeping the old configuration");
            router
                .pool
                .events
                .emit("config_reload_failed", None, e.to_string());
            Err(e.to_string())
        }
        Ok(cfg) => {
            let n = cfg.upstreams.len();
            router
                .pool
                .replace(cfg.upstreams.clone(), cfg.pool.clone(), cfg.breaker.clone());
            router.table.store(Arc::new(crate::route::RouteTable {
                no_proxy: cfg.no_proxy.clone(),
                bypass_loopback: cfg.bypass_loopback,
            }));
            metrics::counter!("proxyguard_config_reloads_total", "result" => "ok").increment(1);
            let pending = needs_restart(started, &cfg);
            let mut detail = format!("{n} upstreams");
            if pending.is_empty() {
                tracing::info!(upstreams = n, "configuration reloaded");
            } else {
                let list = pending.join(", ");
                tracing::warn!(upstreams = n, needs_restart = %list, "configuration reloaded; these changed sections need a restart to apply");
                detail.push_str(&format!("; changed but needs a restart: {list}"));
            }
            router.pool.events.emit("config_reload", None, detail);
            Ok(())
        }
    }
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

/// Lifts the soft open-files limit to the hard one: every tunnel holds two
/// descriptors, and the common soft default (1024) caps a proxy at ~500
/// tunnels. Go's runtime does the same at start-up.
#[cfg(unix)]
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        let old = lim.rlim_cur;
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
            tracing::debug!(from = old, to = lim.rlim_max, "raised open-files limit");
        }
    }
}

#[cfg(not(unix))]
fn raise_fd_limit() {}

/// Runs the gateway until a signal arrives.
pub async fn run(cfg: Config) -> Result<(), ServeError> {
    raise_fd_limit();
    // SIGHUP is caught from before the listeners accept: a reload sent as
    // soon as the port answers must not hit the default action (exit).
    #[cfg(unix)]
    let hup = cfg
        .path
        .as_ref()
        .and_then(|_| tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok());
    let running = start(&cfg, Shutdown::new()).await?;
    #[cfg(unix)]
    if let (Some(path), Some(mut hup)) = (cfg.path.clone(), hup) {
        let router = running.state.router.clone();
        let certs = running.tls.clone();
        let started_with = cfg.clone();
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading {}", path.display());
                reload_all(&certs);
                let _ = reload(&router, &path, &started_with);
            }
        });
    }
    wait_for_signal().await;
    tracing::info!(
        "shutting down: no new connections; live tunnels have {:?}",
        cfg.shutdown_grace
    );
    running.stop().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_names_the_sections_it_cannot_apply() {
        let a = Config::from_toml(
            "[[listen]]\naddr = \"127.0.0.1:3128\"\n[pool]\nstrategy = \"failover\"\n",
            "a",
        )
        .unwrap();
        let b = Config::from_toml(
            "[[listen]]\naddr = \"127.0.0.1:3129\"\n[pool]\nstrategy = \"round_robin\"\n[timeouts]\nconnect = \"1s\"\n",
            "b",
        )
        .unwrap();
        assert_eq!(needs_restart(&a, &b), vec!["listen", "timeouts"]);
        assert!(needs_restart(&a, &a).is_empty());
    }
}
