//! The SOCKS5 listener (RFC 1928 CONNECT; RFC 1929 username/password).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::State;
use crate::upstream::{Host, Target};

/// Why a SOCKS5 negotiation with a client failed.
#[derive(Debug, thiserror::Error)]
enum Socks5Error {
    #[error("client i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("not SOCKS5 (version byte {0:#04x})")]
    Version(u8),
    #[error("no acceptable authentication method offered")]
    NoMethod,
    #[error("bad credentials")]
    Auth,
    #[error("unsupported command {0:#04x}")]
    Command(u8),
    #[error("unsupported address type {0:#04x}")]
    AddrType(u8),
    #[error("bad destination")]
    BadTarget,
    #[error("client too slow")]
    Timeout,
}

async fn reply(s: &mut TcpStream, code: u8, bound: Option<SocketAddr>) -> std::io::Result<()> {
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
    s.write_all(&msg).await
}

async fn negotiate(s: &mut TcpStream, state: &State) -> Result<Target, Socks5Error> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 0x05 {
        return Err(Socks5Error::Version(head[0]));
    }
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await?;
    let want = if state.admission.auth_required() {
        0x02
    } else {
        0x00
    };
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
        if v[0] != 0x01 || !state.admission.check_user(&user, &pass) {
            s.write_all(&[0x01, 0x01]).await?;
            return Err(Socks5Error::Auth);
        }
        s.write_all(&[0x01, 0x00]).await?;
    }
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 0x05 {
        return Err(Socks5Error::Version(req[0]));
    }
    let host = match req[3] {
        0x01 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            Host::Ip(IpAddr::V4(Ipv4Addr::from(a)))
        }
        0x04 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            Host::Ip(IpAddr::V6(Ipv6Addr::from(a)))
        }
        0x03 => {
            let mut l = [0u8; 1];
            s.read_exact(&mut l).await?;
            let mut n = vec![0u8; l[0] as usize];
            s.read_exact(&mut n).await?;
            let name = String::from_utf8(n).map_err(|_| Socks5Error::BadTarget)?;
            Host::parse(&name).ok_or(Socks5Error::BadTarget)?
        }
        t => {
            reply(s, 0x08, None).await?;
            return Err(Socks5Error::AddrType(t));
        }
    };
    let mut p = [0u8; 2];
    s.read_exact(&mut p).await?;
    let port = u16::from_be_bytes(p);
    if req[1] != 0x01 {
        reply(s, 0x07, None).await?;
        return Err(Socks5Error::Command(req[1]));
    }
    if port == 0 {
        reply(s, 0x01, None).await?;
        return Err(Socks5Error::BadTarget);
    }
    Ok(Target::new(host, port))
}

pub async fn serve(mut stream: TcpStream, peer: SocketAddr, state: Arc<State>) {
    let started = Instant::now();
    let negotiated =
        match tokio::time::timeout(state.client_header_timeout, negotiate(&mut stream, &state))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(Socks5Error::Timeout),
        };
    let target = match negotiated {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(target: "access", kind = "socks5", client = %peer, outcome = "bad_request", error = %e, "socks5 negotiation failed");
            return;
        }
    };
    match state.router.tunnel(&target).await {
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
        }
        Ok((conn, route)) => {
            if reply(&mut stream, 0x00, conn.local_addr()).await.is_err() {
                return;
            }
            let cancel = super::tunnel_cancel(&state, &route);
            let _active = super::GaugeGuard::new("proxyguard_tunnels_active");
            let stats =
                crate::relay::relay_conn(&mut stream, conn, state.idle_timeout, cancel).await;
            super::log_tunnel("socks5", peer, &target, &route, started, &stats);
        }
    }
}
