//! The dns, tcp and proxy_tls steps: the same connector serve uses, observed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::walk::{Failure, Walk};
use super::{interpret, probe, Cause, Plan};
use crate::upstream::{
    tcp_connect, Conn, ConnectContext, ConnectError, Phase, PhaseObserver, UpstreamSpec,
};

/// Records each phase the connector reports, and the peer it reached.
pub(super) struct Recorder {
    pub started: Instant,
    pub marks: Vec<(Phase, Duration, f64, String)>,
    pub peer: Option<SocketAddr>,
}

impl PhaseObserver for Recorder {
    fn phase(&mut self, phase: Phase, took: Duration, detail: &str) {
        let at = super::ms(self.started.elapsed());
        self.marks.push((phase, took, at, detail.to_string()));
    }
    fn connected(&mut self, addr: SocketAddr) {
        self.peer = Some(addr);
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
    let mut rec = Recorder {
        started: w.started,
        marks: Vec::new(),
        peer: None,
    };
    let target = &plan.target;
    let connected = match proxy {
        Some(p) => p.connect_proxy(ctx, &mut rec).await,
        None => tcp_connect(ctx, &target.host, target.port, false, &mut rec)
            .await
            .map(Conn::tcp),
    };
    let host_desc = match proxy {
        Some(p) => format!("proxy {}", p.host),
        None => format!("target {}", target.host),
    };
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
                return Err(proxy_tls_failed(w, proxy, rec.peer, &e).await);
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
) -> Failure {
    let started = Instant::now();
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
            w.step(
                "proxy_tls",
                false,
                started.elapsed(),
                format!("{detail}; probe: {}", s.describe()),
            );
            return f;
        }
    }
    w.step("proxy_tls", false, started.elapsed(), detail.clone());
    let c = super::cause::from_connect_error(e, true);
    Failure::new(
        c,
        format!("The TLS handshake with the proxy failed: {detail}."),
    )
}
