//! The dns, tcp and proxy_tls steps: the same connector serve uses, observed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::walk::{Failure, Walk};
use super::{interpret, probe, Cause, Plan};
use crate::upstream::{
    tcp_connect, Conn, ConnectContext, ConnectError, Phase, PhaseObserver, Scheme, UpstreamSpec,
};

/// Records each phase the connector reports, and the peer it reached.
pub(super) struct Recorder {
    pub started: Instant,
    pub marks: Vec<(Phase, Duration, f64, String)>,
    /// Shared so an early probe can start while the connector still runs.
    pub peer: Arc<Mutex<Option<SocketAddr>>>,
}

impl PhaseObserver for Recorder {
    fn phase(&mut self, phase: Phase, took: Duration, detail: &str) {
        let at = super::ms(self.started.elapsed());
        self.marks.push((phase, took, at, detail.to_string()));
    }
    fn connected(&mut self, addr: SocketAddr) {
        if let Ok(mut p) = self.peer.lock() {
            *p = Some(addr);
        }
    }
}

impl Recorder {
    fn mark(&self, phase: Phase) -> Option<(Duration, f64, String)> {
        self.marks
            .iter()
            .find(|m| m.0 == phase)
            .map(|m| (m.1, m.2, m.3.clone()))
    }
}

/// Resolves and connects to the proxy (TCP, and TLS for https://) or, direct,
/// to the target.
pub(super) async fn connect(
    w: &mut Walk,
    plan: &Plan,
    proxy: Option<&UpstreamSpec>,
    ctx: &ConnectContext,
    mut dns_notes: Vec<String>,
) -> Result<Conn, Failure> {
    let peer = Arc::new(Mutex::new(None));
    let mut rec = Recorder {
        started: w.started,
        marks: Vec::new(),
        peer: peer.clone(),
    };
    let target = &plan.target;
    let connected = match proxy {
        Some(p) if p.scheme == Scheme::Https => {
            match race_proxy_tls(p.connect_proxy(ctx, &mut rec), p, &peer, w.timeout).await {
                Ok(r) => r,
                Err((f, probe)) => {
                    return Err(early_mismatch(
                        w,
                        &rec,
                        dns_notes,
                        &host_desc(plan, proxy),
                        f,
                        &probe,
                    ));
                }
            }
        }
        Some(p) => p.connect_proxy(ctx, &mut rec).await,
        None => tcp_connect(ctx, &target.host, target.port, false, &mut rec)
            .await
            .map(Conn::tcp),
    };
    let host_desc = host_desc(plan, proxy);
    match (rec.mark(Phase::Dns), &connected) {
        (Some((took, at, addrs)), _) => {
            w.timings.namelookup = Some(at);
            dns_notes.insert(0, format!("{host_desc} → {addrs}"));
            w.step("dns", true, took, dns_notes.join("; "));
        }
        (None, Err(e @ ConnectError::Dns { .. })) => {
            w.step(
                "dns",
                false,
                w.started.elapsed(),
                format!("{host_desc}: {e}"),
            );
            let c = super::cause::from_connect_error(e, proxy.is_some());
            return Err(Failure::new(
                c,
                format!("The {host_desc} does not resolve: {e}."),
            ));
        }
        (
            None,
            Err(
                e @ ConnectError::Timeout {
                    phase: Phase::Dns, ..
                },
            ),
        ) => {
            w.step(
                "dns",
                false,
                w.started.elapsed(),
                format!("{host_desc}: {e}"),
            );
            let c = if proxy.is_some() {
                Cause::ProxyDnsFailure
            } else {
                Cause::TargetDnsFailure
            };
            return Err(Failure::new(
                c,
                format!("Resolving the {host_desc} timed out."),
            ));
        }
        (None, _) => {
            w.timings.namelookup = Some(0.0);
            dns_notes.insert(0, format!("{host_desc} is an address: no lookup"));
            w.step("dns", true, Duration::ZERO, dns_notes.join("; "));
        }
    }
    let tcp_mark = rec.mark(Phase::Tcp);
    if let Some((took, at, addr)) = &tcp_mark {
        w.timings.connect = Some(*at);
        w.step("tcp", true, *took, format!("connected to {addr}"));
    }
    match connected {
        Ok(c) => {
            if let Some((took, _, _)) = rec.mark(Phase::ProxyTls) {
                let roots = match &plan.roots.proxy_file {
                    Some(f) => {
                        format!("verified against the platform roots and --proxy-cacert {f}")
                    }
                    None => "verified against the platform roots".to_string(),
                };
                w.step(
                    "proxy_tls",
                    true,
                    took,
                    format!("TLS to the proxy established, {roots}"),
                );
            }
            Ok(c)
        }
        Err(e) => {
            let proxy_tls_phase = tcp_mark.is_some() && proxy.is_some();
            if proxy_tls_phase {
                // TCP connected: the https:// proxy's TLS failed.
                let peer = rec.peer.lock().ok().and_then(|p| *p);
                let since = tcp_mark.as_ref().map(|m| m.1).unwrap_or(0.0);
                return Err(proxy_tls_failed(w, proxy, peer, &e, since).await);
            }
            let c = super::cause::from_connect_error(&e, proxy.is_some());
            let why = interpret::tcp_explain(&e);
            w.step("tcp", false, w.started.elapsed(), why.clone());
            Err(Failure::new(c, format!("{host_desc}: {why}")))
        }
    }
}

/// The TLS handshake with an https:// proxy failed: is the port TLS at all?
async fn proxy_tls_failed(
    w: &mut Walk,
    proxy: Option<&UpstreamSpec>,
    peer: Option<SocketAddr>,
    e: &ConnectError,
    tcp_done_ms: f64,
) -> Failure {
    // The step started when TCP was connected.
    let took = || Duration::from_secs_f64((w.at() - tcp_done_ms).max(0.0) / 1000.0);
    let spoken = match peer {
        Some(addr) => Some(probe::what_speaks(addr, probe::deadline(w.timeout)).await),
        None => None,
    };
    let detail = match e {
        ConnectError::Tls { detail, .. } => detail.clone(),
        other => other.to_string(),
    };
    if let (Some(p), Some(s)) = (proxy, &spoken) {
        if let Some(f) = interpret::protocol_mismatch(p, s, peer) {
            let t = took();
            w.step(
                "proxy_tls",
                false,
                t,
                format!("{detail}; probe: {}", s.describe()),
            );
            return f;
        }
    }
    let t = took();
    let c = super::cause::from_connect_error(e, true);
    let f = interpret::proxy_tls(e, c);
    w.step("proxy_tls", false, t, f.summary.clone());
    f
}

fn host_desc(plan: &Plan, proxy: Option<&UpstreamSpec>) -> String {
    match proxy {
        Some(p) => format!("proxy {}", p.host),
        None => format!("target {}", plan.target.host),
    }
}

/// Connects to an https:// proxy; once TCP is up and a short grace has
/// passed without TLS, probes the port in parallel and stops early when it
/// is not TLS at all (a plain HTTP proxy stays silent on a ClientHello).
async fn race_proxy_tls(
    connect: impl std::future::Future<Output = Result<Conn, ConnectError>>,
    p: &UpstreamSpec,
    peer: &Mutex<Option<SocketAddr>>,
    t: Duration,
) -> Result<Result<Conn, ConnectError>, (Failure, String)> {
    let grace = (t / 2).min(Duration::from_secs(1));
    let early = async {
        tokio::time::sleep(grace).await;
        let addr = loop {
            if let Some(a) = peer.lock().ok().and_then(|p| *p) {
                break a;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let spoken = probe::what_speaks(addr, probe::deadline(t)).await;
        match interpret::protocol_mismatch(p, &spoken, Some(addr)) {
            Some(f) => (f, spoken.describe()),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = connect => Ok(r),
        m = early => Err(m),
    }
}

/// The early probe found the https:// proxy port is not TLS: record the
/// steps that happened and the failed proxy_tls step.
fn early_mismatch(
    w: &mut Walk,
    rec: &Recorder,
    mut dns_notes: Vec<String>,
    host_desc: &str,
    f: Failure,
    probe: &str,
) -> Failure {
    match rec.mark(Phase::Dns) {
        Some((took, at, addrs)) => {
            w.timings.namelookup = Some(at);
            dns_notes.insert(0, format!("{host_desc} → {addrs}"));
            w.step("dns", true, took, dns_notes.join("; "));
        }
        None => {
            w.timings.namelookup = Some(0.0);
            dns_notes.insert(0, format!("{host_desc} is an address: no lookup"));
            w.step("dns", true, Duration::ZERO, dns_notes.join("; "));
        }
    }
    let mut since = 0.0;
    if let Some((took, at, addr)) = rec.mark(Phase::Tcp) {
        w.timings.connect = Some(at);
        w.step("tcp", true, took, format!("connected to {addr}"));
        since = at;
    }
    let took = Duration::from_secs_f64((w.at() - since).max(0.0) / 1000.0);
    w.step(
        "proxy_tls",
        false,
        took,
        format!(
            "no TLS answer after {} ms; probe: {probe}",
            took.as_millis()
        ),
    );
    f
}
