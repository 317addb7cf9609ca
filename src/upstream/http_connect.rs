//! HTTP CONNECT client handshake (RFC 9110 §9.3.6).

use base64::Engine;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::{ConnectError, Phase};
use super::{Credentials, Target};

/// Upper bound on a proxy's CONNECT reply head.
const MAX_REPLY_HEAD: usize = 16 * 1024;

/// `Basic base64(user:pass)` for `Proxy-Authorization`.
pub fn basic_auth(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// A parsed proxy reply head.
#[derive(Debug, Clone)]
pub struct ReplyHead {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl ReplyHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends CONNECT and reads the reply. Returns bytes read past the reply head.
pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    target: &Target,
    creds: Option<&Credentials>,
) -> Result<Option<Bytes>, ConnectError> {
    let (head, rest) = exchange(io, target, creds).await?;
    check_reply(&head, creds.is_some())?;
    Ok(rest)
}

/// Sends CONNECT and returns the raw reply (doctor wants it even on failure).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    target: &Target,
    creds: Option<&Credentials>,
) -> Result<(ReplyHead, Option<Bytes>), ConnectError> {
    let mut req = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(c) = creds {
        req.push_str("Proxy-Authorization: ");
        req.push_str(&basic_auth(c));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| ConnectError::from_io(&e, Phase::ProxyHandshake, "", true))?;
    io.flush()
        .await
        .map_err(|e| ConnectError::from_io(&e, Phase::ProxyHandshake, "", true))?;
    read_reply_head(io).await
}

/// Sends `OPTIONS * HTTP/1.0` (no Host, so the proxy cannot forward it) and
/// reads the status line the proxy answers itself. A 407 means our
/// credentials are missing or wrong; any other status means it is alive.
pub async fn options_probe<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    creds: Option<&Credentials>,
) -> Result<ReplyHead, ConnectError> {
    let mut req = String::from("OPTIONS * HTTP/1.0\r\nUser-Agent: proxyguard-health\r\n");
    if let Some(c) = creds {
        req.push_str("Proxy-Authorization: ");
        req.push_str(&basic_auth(c));
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    io.write_all(req.as_bytes())
        .await
        .map_err(|e| ConnectError::from_io(&e, Phase::ProxyHandshake, "", true))?;
    let (head, _) = read_reply_head(io).await?;
    if head.status == 407 {
        check_reply(&head, creds.is_some())?;
    }
    Ok(head)
}

/// Reads an HTTP response head without consuming bytes past it into nowhere:
/// extra bytes are returned to the caller.
pub async fn read_reply_head<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<(ReplyHead, Option<Bytes>), ConnectError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| ConnectError::from_io(&e, Phase::ProxyHandshake, "", true))?;
        if n == 0 {
            if buf.is_empty() {
                return Err(ConnectError::Reset {
                    phase: Phase::ProxyHandshake,
                    proxy: true,
                });
            }
            return Err(protocol_error(&buf));
        }
        buf.extend_from_slice(&chunk[..n]);
        let k = buf.len().min(5);
        if buf[..k] != b"HTTP/"[..k] {
            return Err(protocol_error(&buf));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => {
                let head = ReplyHead {
                    status: resp.code.unwrap_or(0),
                    reason: resp.reason.unwrap_or("").to_string(),
                    headers: resp
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect(),
                };
                let rest = if len < buf.len() {
                    Some(Bytes::copy_from_slice(&buf[len..]))
                } else {
                    None
                };
                return Ok((head, rest));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() > MAX_REPLY_HEAD {
                    return Err(ConnectError::ProxyProtocol {
                        detail: "CONNECT reply head too large".into(),
                    });
                }
            }
            Err(e) => {
                let mut err = protocol_error(&buf);
                if let ConnectError::ProxyProtocol { detail } = &mut err {
                    detail.push_str(&format!(" ({e})"));
                }
                return Err(err);
            }
        }
    }
}

fn protocol_error(buf: &[u8]) -> ConnectError {
    let detail = if buf.first() == Some(&0x05) {
        "the proxy answered with SOCKS5 bytes: this port speaks SOCKS5, not HTTP".to_string()
    } else {
        let shown: String = String::from_utf8_lossy(&buf[..buf.len().min(40)])
            .chars()
            .map(|c| if c.is_control() { '.' } else { c })
            .collect();
        format!("not an HTTP reply: {shown:?}")
    };
    ConnectError::ProxyProtocol { detail }
}

/// Maps a CONNECT reply to success or a classified error.
pub fn check_reply(head: &ReplyHead, had_credentials: bool) -> Result<(), ConnectError> {
    match head.status {
        200..=299 => Ok(()),
        407 => {
            let scheme = head
                .header("proxy-authenticate")
                .and_then(|v| v.split_whitespace().next())
                .unwrap_or("unknown")
                .to_string();
            if had_credentials {
                Err(ConnectError::ProxyAuthRejected { scheme })
            } else {
                Err(ConnectError::ProxyAuthRequired { scheme })
            }
        }
        403 => Err(ConnectError::ProxyForbidden { status: 403 }),
        // The proxy is alive and says its path to the target failed
        // (tinyproxy 500 "Unable to connect", squid 503 ERR_CONNECT_FAIL,
        // privoxy 500, gateways' 502/504).
        status @ (500 | 502 | 503 | 504) => Err(ConnectError::TargetFailed {
            status,
            reason: match head.header("x-squid-error") {
                Some(e) => format!("{} ({e})", head.reason),
                None => head.reason.clone(),
            },
            kind: super::error::TargetFault::from_reply(status, head.header("x-squid-error")),
            next_hop: None,
        }),
        status => Err(ConnectError::ProxyStatus {
            status,
            reason: head.reason.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn reply(bytes: &[u8]) -> Result<(ReplyHead, Option<Bytes>), ConnectError> {
        let mut rd = bytes;
        read_reply_head(&mut rd).await
    }

    #[tokio::test]
    async fn parses_replies() {
        let (h, rest) = reply(b"HTTP/1.1 200 Connection established\r\n\r\nabc")
            .await
            .unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(rest.as_deref(), Some(&b"abc"[..]));
        let (h, _) = reply(b"HTTP/1.1 407 Auth\r\nProxy-Authenticate: NTLM\r\n\r\n")
            .await
            .unwrap();
        match check_reply(&h, false) {
            Err(ConnectError::ProxyAuthRequired { scheme }) => assert_eq!(scheme, "NTLM"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            check_reply(&h, true),
            Err(ConnectError::ProxyAuthRejected { .. })
        ));
        assert!(matches!(
            reply(b"\x05\x00").await,
            Err(ConnectError::ProxyProtocol { .. })
        ));
        assert!(matches!(reply(b"").await, Err(ConnectError::Reset { .. })));
        assert!(matches!(
            reply(b"SSH-2.0-OpenSSH\r\n").await,
            Err(ConnectError::ProxyProtocol { .. })
        ));
    }
}
