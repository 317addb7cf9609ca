//! The proxy_handshake step: CONNECT (HTTP proxies, for https:// targets) or
//! SOCKS5 negotiation. A proxy that stays silent or answers in another
//! protocol is probed to name the scheme that would work.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::walk::{Failure, Walk};
use super::{interpret, probe, Cause, Plan};
use crate::upstream::{
    http_connect, socks5, Conn, ConnectContext, ConnectError, Host, Phase, Scheme, Target,
    UpstreamSpec,
};

/// Runs the handshake; returns the connection and whether plain-HTTP
/// requests go to the proxy in absolute form (no tunnel).
pub(super) async fn run(
    w: &mut Walk,
    plan: &Plan,
    proxy: Option<&UpstreamSpec>,
    ctx: &ConnectContext,
    mut conn: Conn,
) -> Result<(Conn, bool), Failure> {
    let Some(p) = proxy else {
        return Ok((conn, false));
    };
    let absolute_form = matches!(p.scheme, Scheme::Http | Scheme::Https) && !plan.https;
    if absolute_form || p.scheme == Scheme::Direct {
        return Ok((conn, absolute_form));
    }
    let t = w.timeout;
    let target = &plan.target;
    let hs_start = Instant::now();
    let addr = peer(&conn);
    let res: Result<String, ConnectError> = match p.scheme {
        Scheme::Socks5 | Scheme::Socks5h => {
            let dest = socks_dest(w, p, ctx, target, hs_start).await?;
            let hs = socks5::handshake(&mut conn, &dest, p.credentials.as_ref());
            match race(hs, t, p, addr).await {
                Raced::Mismatch(f, probe) => return Err(mismatch(w, hs_start, f, &probe)),
                Raced::Done(Err(e)) => Err(e),
                Raced::Done(Ok(())) => Ok(format!("SOCKS5 CONNECT {dest} → succeeded")),
            }
        }
        _ => {
            let hs = http_connect::exchange(&mut conn, target, p.credentials.as_ref());
            match race(hs, t, p, addr).await {
                Raced::Mismatch(f, probe) => return Err(mismatch(w, hs_start, f, &probe)),
                Raced::Done(Err(e)) => Err(e),
                Raced::Done(Ok((head, rest))) => {
                    match http_connect::check_reply(&head, p.credentials.is_some()) {
                        Ok(()) => {
                            conn.prefix = rest;
                            Ok(format!(
                                "CONNECT {target} → {} {}",
                                head.status, head.reason
                            ))
                        }
                        Err(e) => {
                            let extra = head
                                .header("x-squid-error")
                                .map(|v| format!(" (X-Squid-Error: {v})"))
                                .unwrap_or_default();
                            w.step(
                                "proxy_handshake",
                                false,
                                hs_start.elapsed(),
                                format!(
                                    "CONNECT {target} → {} {}{extra}",
                                    head.status, head.reason
                                ),
                            );
                            return Err(interpret::connect_reply(
                                &e,
                                &head,
                                p.credentials.is_some(),
                            ));
                        }
                    }
                }
            }
        }
    };
    match res {
        Ok(d) => {
            w.timings.proxy_handshake = Some(w.at());
            w.step("proxy_handshake", true, hs_start.elapsed(), d);
            Ok((conn, false))
        }
        Err(e) => Err(failed(w, p, peer(&conn), e, hs_start).await),
    }
}

enum Raced<T> {
    Done(Result<T, ConnectError>),
    /// The port speaks another protocol (found while the handshake waited).
    Mismatch(Failure, String),
}

/// Runs the handshake under the deadline; after a short grace of silence,
/// probes the port in parallel and stops early when it clearly speaks
/// another protocol than the proxy URL says (no wait for the full timeout).
async fn race<T>(
    hs: impl std::future::Future<Output = Result<T, ConnectError>>,
    t: Duration,
    p: &UpstreamSpec,
    addr: Option<SocketAddr>,
) -> Raced<T> {
    let grace = (t / 2).min(Duration::from_secs(1));
    let early = async {
        let Some(addr) = addr else {
            return std::future::pending().await;
        };
        tokio::time::sleep(grace).await;
        let spoken = probe::what_speaks(addr, probe::deadline(t)).await;
        match interpret::protocol_mismatch(p, &spoken, Some(addr)) {
            Some(f) => (f, spoken.describe()),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::time::timeout(t, hs) => Raced::Done(
            r.unwrap_or_else(|_| Err(ConnectError::timeout(Phase::ProxyHandshake, t, true))),
        ),
        (f, probe) = early => Raced::Mismatch(f, probe),
    }
}

fn mismatch(w: &mut Walk, hs_start: Instant, f: Failure, probe: &str) -> Failure {
    w.step(
        "proxy_handshake",
        false,
        hs_start.elapsed(),
        format!(
            "no answer to the handshake after {} ms; probe: {probe}",
            hs_start.elapsed().as_millis()
        ),
    );
    f
}

/// socks5:// resolves the target here; socks5h:// lets the proxy.
async fn socks_dest(
    w: &mut Walk,
    p: &UpstreamSpec,
    ctx: &ConnectContext,
    target: &Target,
    hs_start: Instant,
) -> Result<Target, Failure> {
    if p.scheme != Scheme::Socks5 {
        return Ok(target.clone());
    }
    match ctx
        .resolver
        .resolve(&target.host, target.port, w.timeout, false)
        .await
    {
        Ok(a) => Ok(Target::new(Host::Ip(a[0].ip()), target.port)),
        Err(e) => {
            w.step(
                "proxy_handshake",
                false,
                hs_start.elapsed(),
                format!("socks5:// resolves the target locally: {e}"),
            );
            Err(Failure::new(Cause::TargetDnsFailure, format!("The target does not resolve locally (socks5:// resolves names here; socks5h:// would let the proxy): {e}.")))
        }
    }
}

/// The handshake failed: when the proxy was silent, closed on us or answered
/// in another protocol, probe what the port speaks.
async fn failed(
    w: &mut Walk,
    p: &UpstreamSpec,
    peer: Option<SocketAddr>,
    e: ConnectError,
    hs_start: Instant,
) -> Failure {
    let worth_probing = matches!(
        e,
        ConnectError::Timeout { .. }
            | ConnectError::ProxyProtocol { .. }
            | ConnectError::Reset { .. }
            | ConnectError::Io { .. }
    );
    if let (true, Some(addr)) = (worth_probing, peer) {
        let spoken = probe::what_speaks(addr, probe::deadline(w.timeout)).await;
        if let Some(f) = interpret::protocol_mismatch(p, &spoken, Some(addr)) {
            w.step(
                "proxy_handshake",
                false,
                hs_start.elapsed(),
                format!("{e}; probe: {}", spoken.describe()),
            );
            return f;
        }
        if matches!(e, ConnectError::Timeout { .. }) {
            w.step(
                "proxy_handshake",
                false,
                hs_start.elapsed(),
                format!("{e}; probe: {}", spoken.describe()),
            );
            return Failure::new(
                Cause::ProxyTimeout,
                format!("The proxy accepted TCP but never answered the {} handshake, and {}.", p.scheme.as_str(), spoken.describe()),
            )
            .with_fix("The proxy process is stuck or overloaded, or something in front of it swallows the connection: check the proxy's logs and the port's owner.");
        }
    }
    w.step("proxy_handshake", false, hs_start.elapsed(), e.to_string());
    let c = super::cause::from_connect_error(&e, true);
    Failure::new(c, format!("The proxy handshake failed: {e}."))
}

fn peer(c: &Conn) -> Option<SocketAddr> {
    match &c.io {
        crate::upstream::conn::Io::Tcp(s) => s.peer_addr().ok(),
        crate::upstream::conn::Io::Tls(s) => s.get_ref().0.peer_addr().ok(),
    }
}
