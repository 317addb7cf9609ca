//! SOCKS5 client handshake (RFC 1928) with username/password (RFC 1929).

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{ConnectError, Phase};
use super::{Credentials, Host, Target};

fn io_err(e: std::io::Error) -> ConnectError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        return ConnectError::Reset {
            phase: Phase::ProxyHandshake,
            proxy: true,
        };
    }
    ConnectError::from_io(&e, Phase::ProxyHandshake, "", true)
}

fn not_socks(first: u8) -> ConnectError {
    let detail = if first == b'H' {
        "an HTTP server answered the SOCKS5 greeting: this port speaks HTTP, not SOCKS5".to_string()
    } else {
        format!("not a SOCKS5 reply (first byte {first:#04x})")
    };
    ConnectError::ProxyProtocol { detail }
}

/// Encodes a target as SOCKS5 ATYP + address + port.
pub fn encode_addr(target: &Target, out: &mut Vec<u8>) -> Result<(), ConnectError> {
    match &target.host {
        Host::Ip(std::net::IpAddr::V4(ip)) => {
            out.push(0x01);
            out.extend_from_slice(&ip.octets());
        }
        Host::Ip(std::net::IpAddr::V6(ip)) => {
            out.push(0x04);
            out.extend_from_slice(&ip.octets());
        }
        Host::Name(n) => {
            let len = u8::try_from(n.len())
                .map_err(|_| ConnectError::NoRoute(format!("host name too long: {n}")))?;
            out.push(0x03);
            out.push(len);
            out.extend_from_slice(n.as_bytes());
        }
    }
    out.extend_from_slice(&target.port.to_be_bytes());
    Ok(())
}

/// Negotiates a CONNECT to `target`.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    target: &Target,
    creds: Option<&Credentials>,
) -> Result<(), ConnectError> {
    negotiate_auth(io, creds).await?;
    request(io, target).await
}

/// The method negotiation and (RFC 1929) authentication.
pub async fn negotiate_auth<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    creds: Option<&Credentials>,
) -> Result<(), ConnectError> {
    let greeting: &[u8] = if creds.is_some() {
        &[0x05, 0x02, 0x00, 0x02]
    } else {
        &[0x05, 0x01, 0x00]
    };
    io.write_all(greeting).await.map_err(io_err)?;
    let mut reply = [0u8; 2];
    io.read_exact(&mut reply[..1]).await.map_err(io_err)?;
    if reply[0] != 0x05 {
        return Err(not_socks(reply[0]));
    }
    io.read_exact(&mut reply[1..]).await.map_err(io_err)?;
    match (reply[1], creds) {
        (0x00, _) => {}
        (0x02, Some(c)) => {
            let (u, p) = (c.username.as_bytes(), c.password.as_bytes());
            if u.len() > 255 || p.len() > 255 {
                return Err(ConnectError::ProxyAuthRejected {
                    scheme: "socks5 (credentials longer than 255 bytes)".into(),
                });
            }
            let mut msg = Vec::with_capacity(3 + u.len() + p.len());
            msg.push(0x01);
            msg.push(u.len() as u8);
            msg.extend_from_slice(u);
            msg.push(p.len() as u8);
            msg.extend_from_slice(p);
            io.write_all(&msg).await.map_err(io_err)?;
            let mut st = [0u8; 2];
            io.read_exact(&mut st).await.map_err(io_err)?;
            if st[1] != 0x00 {
                return Err(ConnectError::ProxyAuthRejected {
                    scheme: "socks5 username/password".into(),
                });
            }
        }
        (0x02, None) | (0xFF, None) => {
            return Err(ConnectError::ProxyAuthRequired {
                scheme: "socks5 username/password".into(),
            })
        }
        (0xFF, Some(_)) => {
            return Err(ConnectError::ProxyAuthRejected {
                scheme: "socks5 (no acceptable method)".into(),
            })
        }
        (m, _) => {
            return Err(ConnectError::ProxyProtocol {
                detail: format!("SOCKS5 proxy chose unsupported method {m:#04x}"),
            })
        }
    }
    Ok(())
}

/// The CONNECT request and its reply.
pub async fn request<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    target: &Target,
) -> Result<(), ConnectError> {
    let mut req = vec![0x05, 0x01, 0x00];
    encode_addr(target, &mut req)?;
    io.write_all(&req).await.map_err(io_err)?;
    let mut head = [0u8; 4];
    io.read_exact(&mut head).await.map_err(io_err)?;
    if head[0] != 0x05 {
        return Err(not_socks(head[0]));
    }
    if head[1] != 0x00 {
        return Err(ConnectError::SocksReply { code: head[1] });
    }
    let skip = match head[3] {
        0x01 => 4,
        0x04 => 16,
        0x03 => {
            let mut l = [0u8; 1];
            io.read_exact(&mut l).await.map_err(io_err)?;
            l[0] as usize
        }
        t => {
            return Err(ConnectError::ProxyProtocol {
                detail: format!("SOCKS5 reply with bad address type {t:#04x}"),
            })
        }
    };
    let mut bound = vec![0u8; skip + 2];
    io.read_exact(&mut bound).await.map_err(io_err)?;
    Ok(())
}
