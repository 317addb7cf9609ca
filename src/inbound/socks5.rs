//! The SOCKS5 listener (RFC 1928 CONNECT; RFC 1929 username/password).
//! Every failure after the greeting is answered with an RFC 1928/1929 reply
//! before the connection closes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{ConnCtx, Gateway};
use crate::acl;
use crate::upstream::{Host, Target};

/// RFC 1928 reply codes used here.
pub mod rep {
    pub const GENERAL_FAILURE: u8 = 0x01;
    pub const NOT_ALLOWED: u8 = 0x02;
    pub const HOST_UNREACHABLE: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x07;
    pub const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;
}

/// Why a SOCKS5 negotiation with a client failed.
#[derive(Debug, thiserror::Error)]
pub enum Socks5Error {
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS5 (version byte {0:#04x})")]
    Version(u8),
    #[error("no acceptable authentication method offered")]
    NoMethod,
    #[error("bad credentials")]
    Auth,
    #[error("client is banned after repeated failed logins")]
    Banned,
    #[error("unsupported command {0:#04x}")]
    Command(u8),
    #[error("unsupported address type {0:#04x}")]
    AddrType(u8),
    #[error("bad destination: {0}")]
    BadTarget(&'static str),
    #[error("client too slow")]
    Timeout,
}

/// How the listener checks credentials during negotiation.
pub trait Authenticator: Sync {
    /// Whether username/password (method 2) is required.
    fn required(&self) -> bool;
    /// True while the client may not even try (a ban).
    fn banned(&self) -> bool;
    fn check(&self, user: &[u8], pass: &[u8]) -> bool;
}

/// No credentials needed (fuzzing and tests).
pub struct NoAuth;
impl Authenticator for NoAuth {
    fn required(&self) -> bool {
        false
    }
    fn banned(&self) -> bool {
        false
    }
    fn check(&self, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

/// Writes a reply to the CONNECT request.
pub async fn reply<S: AsyncWrite + Unpin>(
    s: &mut S,
    code: u8,
    bound: Option<SocketAddr>,
) -> std::io::Result<()> {
    let mut msg = vec![0x05, code, 0x00];
    match bound.map(|a| a.ip()) {
        Some(IpAddr::V6(ip)) => {
            msg.push(0x04);
            msg.extend_from_slice(&ip.octets());
        }
        Some(IpAddr::V4(ip)) => {
            msg.push(0x01);
            msg.extend_from_slice(&ip.octets());
        }
        None => {
            msg.push(0x01);
            msg.extend_from_slice(&[0, 0, 0, 0]);
        }
    }
    msg.extend_from_slice(&bound.map(|a| a.port()).unwrap_or(0).to_be_bytes());
    s.write_all(&msg).await?;
    s.flush().await
}

/// Replies `code` to the request and fails with `err`.
async fn refuse<S: AsyncWrite + Unpin, T>(
    s: &mut S,
    code: u8,
    err: Socks5Error,
) -> Result<T, Socks5Error> {
    reply(s, code, None).await?;
    Err(err)
}

/// Checks a domain name from a request: 1..=253 bytes of UTF-8 without NUL
/// that parse as a host.
pub fn parse_domain(raw: &[u8]) -> Result<Host, &'static str> {
    if raw.is_empty() {
        return Err("empty domain name");
    }
    if raw.len() > 253 {
        return Err("domain name longer than 253 bytes");
    }
    if raw.contains(&0) {
        return Err("NUL in domain name");
    }
    let name = std::str::from_utf8(raw).map_err(|_| "domain name is not UTF-8")?;
    Host::parse(name).ok_or("invalid domain name")
}

/// Runs the method selection, authentication and request of RFC 1928 on
/// any stream; returns the requested target. Failures past the greeting
/// have been answered on `s`.
pub async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    auth: &dyn Authenticator,
) -> Result<Target, Socks5Error> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 0x05 {
        // Not SOCKS5 (SOCKS4 is 0x04): "no acceptable methods".
        s.write_all(&[0x05, 0xFF]).await?;
        return Err(Socks5Error::Version(head[0]));
    }
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await?;
    let want = if auth.required() { 0x02 } else { 0x00 };
    if !methods.contains(&want) {
        s.write_all(&[0x05, 0xFF]).await?;
        return Err(Socks5Error::NoMethod);
    }
    s.write_all(&[0x05, want]).await?;
    if want == 0x02 {
        let mut v = [0u8; 2];
        s.read_exact(&mut v).await?;
        let mut user = vec![0u8; v[1] as usize];
        s.read_exact(&mut user).await?;
        let mut pl = [0u8; 1];
        s.read_exact(&mut pl).await?;
        let mut pass = vec![0u8; pl[0] as usize];
        s.read_exact(&mut pass).await?;
        if auth.banned() {
            s.write_all(&[0x01, 0x01]).await?;
            return Err(Socks5Error::Banned);
        }
        if v[0] != 0x01 || !auth.check(&user, &pass) {
            s.write_all(&[0x01, 0x01]).await?;
            return Err(Socks5Error::Auth);
        }
        s.write_all(&[0x01, 0x00]).await?;
    }
    request(s).await
}

async fn request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<Target, Socks5Error> {
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 0x05 {
        return refuse(s, rep::GENERAL_FAILURE, Socks5Error::Version(req[0])).await;
    }
    let host = match req[3] {
        0x01 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            Ok(Host::Ip(IpAddr::V4(Ipv4Addr::from(a))))
        }
        0x04 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            Ok(Host::Ip(IpAddr::V6(Ipv6Addr::from(a))))
        }
        0x03 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).await?;
            let mut n = vec![0u8; l[0] as usize];
            s.read_exact(&mut n).await?;
            parse_domain(&n)
        }
        t => {
            return refuse(s, rep::ADDRESS_TYPE_NOT_SUPPORTED, Socks5Error::AddrType(t)).await;
        }
    };
    let mut p = [0u8; 2];
    s.read_exact(&mut p).await?;
    let port = u16::from_be_bytes(p);
    let host = match host {
        Ok(h) => h,
        Err(why) => return refuse(s, rep::HOST_UNREACHABLE, Socks5Error::BadTarget(why)).await,
    };
    if req[1] != 0x01 {
        return refuse(s, rep::COMMAND_NOT_SUPPORTED, Socks5Error::Command(req[1])).await;
    }
    if port == 0 {
        return refuse(s, rep::GENERAL_FAILURE, Socks5Error::BadTarget("port 0")).await;
    }
    Ok(Target::new(host, port))
}

struct ListenerAuth<'a> {
    state: &'a Gateway,
    ip: IpAddr,
}

impl Authenticator for ListenerAuth<'_> {
    fn required(&self) -> bool {
        self.state.admission.auth_required()
    }
    fn banned(&self) -> bool {
        self.state.bans.banned(self.ip)
    }
    fn check(&self, user: &[u8], pass: &[u8]) -> bool {
        let ok = self.state.admission.check_user(user, pass);
        if ok {
            self.state.bans.success(self.ip);
        } else {
            metrics::counter!("proxyguard_auth_failures_total", "kind" => "socks5").increment(1);
            if let Some(len) = self.state.bans.failure(self.ip) {
                super::bans::announce(&self.state.router.pool.events, self.ip, len, "socks5");
            }
        }
        ok
    }
}

/// Lets the client read our last reply: half-close, then discard what it
/// still sends for a moment (closing with unread input would send a reset
/// that can destroy the reply in flight).
async fn linger(s: &mut TcpStream) {
    let _ = s.shutdown().await;
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        for _ in 0..64 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
}

pub async fn serve(mut stream: TcpStream, ctx: Arc<ConnCtx>, state: Arc<Gateway>) {
    let peer = ctx.peer;
    let started = Instant::now();
    let auth = ListenerAuth {
        state: &state,
        ip: peer.ip(),
    };
    let negotiated = match tokio::time::timeout(
        state.client_header_timeout,
        negotiate(&mut stream, &auth),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(Socks5Error::Timeout),
    };
    let target = match negotiated {
        Ok(t) => t,
        Err(e) => {
            let outcome = match e {
                Socks5Error::Banned => "auth_banned",
                Socks5Error::Auth => "auth_failed",
                _ => "bad_request",
            };
            tracing::info!(target: "access", kind = "socks5", client = %peer, outcome, error = %e, "socks5 negotiation failed");
            linger(&mut stream).await;
            return;
        }
    };
    ctx.slot.active();
    let target = Target::new(acl::normalize(&target.host), target.port);
    let scope = match ctx.acl.check_target(&target, true) {
        Ok(verdict) => acl::Scope {
            acl: ctx.acl.clone(),
            verdict,
        },
        Err(d) => {
            acl::record(&d, peer, "socks5");
            let _ = reply(&mut stream, rep::NOT_ALLOWED, None).await;
            linger(&mut stream).await;
            return;
        }
    };
    match acl::scoped(scope, state.router.tunnel(&target)).await {
        Err(e) => {
            metrics::counter!("proxyguard_tunnels_total", "kind" => "socks5", "outcome" => e.proxy_status_error()).increment(1);
            let _ = reply(&mut stream, e.socks_reply(), None).await;
            tracing::info!(
                target: "access",
                kind = "socks5",
                client = %peer,
                target = %target,
                duration_ms = started.elapsed().as_millis() as u64,
                outcome = e.proxy_status_error(),
                error = %e,
                "tunnel failed"
            );
            linger(&mut stream).await;
        }
        Ok((conn, route)) => {
            if reply(&mut stream, 0x00, conn.local_addr()).await.is_err() {
                return;
            }
            let tunnel = super::tunnel::Tunnel {
                kind: "socks5",
                peer,
                target: &target,
                route: &route,
                started,
            };
            tunnel
                .run(&state, |watch, cancel| {
                    crate::relay::relay_conn(&mut stream, conn, watch, cancel)
                })
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run(input: &[u8]) -> (Result<Target, Socks5Error>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(4096);
        client.write_all(input).await.unwrap();
        client.shutdown().await.unwrap();
        let r = negotiate(&mut server, &NoAuth).await;
        drop(server);
        let mut out = Vec::new();
        client.read_to_end(&mut out).await.unwrap();
        (r, out)
    }

    #[tokio::test]
    async fn every_bad_request_gets_a_reply() {
        let greet = [5u8, 1, 0];
        let cases: Vec<(Vec<u8>, u8)> = vec![
            ([&greet[..], &[5, 1, 0, 3, 0, 0, 80]].concat(), 0x04),
            (
                [&greet[..], &[5, 1, 0, 3, 3, b'a', 0, b'b', 0, 80]].concat(),
                0x04,
            ),
            (
                [&greet[..], &[5, 1, 0, 3, 2, 0xff, 0xfe, 0, 80]].concat(),
                0x04,
            ),
            (
                [&greet[..], &[4, 1, 0, 1, 1, 2, 3, 4, 0, 80]].concat(),
                0x01,
            ),
            (
                [&greet[..], &[5, 2, 0, 1, 1, 2, 3, 4, 0, 80]].concat(),
                0x07,
            ),
            ([&greet[..], &[5, 1, 0, 9]].concat(), 0x08),
            ([&greet[..], &[5, 1, 0, 1, 1, 2, 3, 4, 0, 0]].concat(), 0x01),
        ];
        for (input, code) in cases {
            let (r, out) = run(&input).await;
            assert!(r.is_err(), "{input:?}");
            assert_eq!(&out[..2], &[5, 0], "{input:?}");
            assert_eq!(out.len(), 2 + 10, "{input:?} -> {out:?}");
            assert_eq!(out[2..4], [5, code], "{input:?} -> {out:?}");
        }
        let long = [&greet[..], &[5, 1, 0, 3, 254], &[b'a'; 254], &[0, 80]].concat();
        let (r, out) = run(&long).await;
        assert!(r.is_err());
        assert_eq!(out[2..4], [5, 0x04]);
        let (r, out) = run(&[4, 1, 0, 80, 127, 0, 0, 1, 0]).await;
        assert!(matches!(r, Err(Socks5Error::Version(4))));
        assert_eq!(out, [5, 0xFF]);
        let ok = [&greet[..], &[5, 1, 0, 3, 3, b'a', b'.', b'b', 1, 187]].concat();
        let (r, _) = run(&ok).await;
        assert_eq!(r.unwrap().to_string(), "a.b:443");
    }
}
