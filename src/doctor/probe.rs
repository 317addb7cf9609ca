//! What does a port really speak? Fresh connections try an HTTP request, a
//! SOCKS5 greeting and a TLS ClientHello, each under a short deadline, and
//! [`Sniff`] keeps the first bytes a peer sent so a plaintext answer to our
//! ClientHello is recognised at once.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// What the probes found. Several can be true (rarely).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spoken {
    /// The status line of an HTTP answer to a plain request.
    pub http: Option<String>,
    /// A SOCKS5 method-selection reply came back.
    pub socks5: bool,
    /// A TLS ServerHello (or a TLS alert) came back.
    pub tls: bool,
    /// HTTP answered our ClientHello in plaintext.
    pub http_to_tls: bool,
}

impl Spoken {
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if let Some(s) = &self.http {
            v.push(format!("answers HTTP ({s})"));
        }
        if self.socks5 {
            v.push("answers a SOCKS5 greeting".to_string());
        }
        if self.tls {
            v.push("answers a TLS ClientHello".to_string());
        }
        if self.http_to_tls && self.http.is_none() {
            v.push("answers a TLS ClientHello with plain HTTP".to_string());
        }
        if v.is_empty() {
            "answers neither HTTP, SOCKS5 nor TLS".to_string()
        } else {
            v.join(", ")
        }
    }

    pub fn speaks_http(&self) -> bool {
        self.http.is_some() || self.http_to_tls
    }
}

/// The probe deadline: short, but never longer than the user's timeout.
pub fn deadline(timeout: Duration) -> Duration {
    timeout.min(Duration::from_secs(3))
}

/// Probes `addr` with the three protocols at once. Returns as soon as one
/// answers (a port speaks one protocol), or when all have ended or timed out.
pub async fn what_speaks(addr: SocketAddr, deadline: Duration) -> Spoken {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Spoken>(3);
    let jobs = [
        tokio::spawn(report(tx.clone(), deadline, async move {
            Spoken {
                http: http_probe(addr).await,
                ..Spoken::default()
            }
        })),
        tokio::spawn(report(tx.clone(), deadline, async move {
            Spoken {
                socks5: socks5_probe(addr).await,
                ..Spoken::default()
            }
        })),
        tokio::spawn(report(tx, deadline, async move {
            let (tls, http_to_tls) = tls_probe(addr).await;
            Spoken {
                tls,
                http_to_tls,
                ..Spoken::default()
            }
        })),
    ];
    let mut found = Spoken::default();
    // Each job sends once (or not at all on timeout); the channel closes when all are done.
    while let Some(s) = rx.recv().await {
        found.http = found.http.or(s.http);
        found.socks5 |= s.socks5;
        found.tls |= s.tls;
        found.http_to_tls |= s.http_to_tls;
        if found.speaks_http() || found.socks5 || found.tls {
            break;
        }
    }
    for j in jobs {
        j.abort();
    }
    found
}

async fn report(
    tx: tokio::sync::mpsc::Sender<Spoken>,
    deadline: Duration,
    f: impl std::future::Future<Output = Spoken>,
) {
    if let Some(s) = bounded(deadline, f).await {
        let _ = tx.send(s).await;
    }
}

async fn bounded<T>(d: Duration, f: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(d, f).await.ok()
}

async fn http_probe(addr: SocketAddr) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    // HTTP/1.0 without a Host: a proxy answers it itself. With `Host: probe`
    // tinyproxy took it for a request to http://probe/ and looked the name
    // `probe` up on its network before answering 500.
    s.write_all(b"OPTIONS * HTTP/1.0\r\nUser-Agent: proxyguard-doctor\r\n\r\n")
        .await
        .ok()?;
    let mut buf = vec![0u8; 256];
    let mut n = 0;
    while n < buf.len() {
        let k = s.read(&mut buf[n..]).await.ok()?;
        if k == 0 || buf[..n + k].contains(&b'\n') {
            n += k;
            break;
        }
        n += k;
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let line = head.lines().next()?.trim().to_string();
    line.starts_with("HTTP/").then_some(line)
}

async fn socks5_probe(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return false;
    };
    if s.write_all(&[0x05, 0x01, 0x00]).await.is_err() {
        return false;
    }
    let mut r = [0u8; 2];
    s.read_exact(&mut r).await.is_ok()
        && r[0] == 0x05
        && (r[1] == 0x00 || r[1] == 0x02 || r[1] == 0xff)
}

/// (speaks TLS, answered the ClientHello with plain HTTP)
async fn tls_probe(addr: SocketAddr) -> (bool, bool) {
    let Ok(s) = TcpStream::connect(addr).await else {
        return (false, false);
    };
    let (sniff, first) = Sniff::new(s);
    let name = rustls_pki_types::ServerName::IpAddress(addr.ip().into());
    let connector = tokio_rustls::TlsConnector::from(crate::upstream::tls::default_client_config());
    let r = connector.connect(name, sniff).await;
    let tls = match &r {
        Ok(_) => true,
        Err(e) => matches!(
            e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>()),
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_))
        ),
    };
    (tls, starts_with_http(&first))
}

/// True when the first bytes read look like an HTTP response.
pub fn starts_with_http(first: &Mutex<Vec<u8>>) -> bool {
    first
        .lock()
        .map(|b| b.starts_with(b"HTTP/"))
        .unwrap_or(false)
}

/// A stream that keeps a copy of the first bytes it read.
pub struct Sniff<S> {
    inner: S,
    first: Arc<Mutex<Vec<u8>>>,
}

const SNIFF_BYTES: usize = 16;

impl<S> Sniff<S> {
    pub fn new(inner: S) -> (Self, Arc<Mutex<Vec<u8>>>) {
        let first = Arc::new(Mutex::new(Vec::new()));
        (
            Sniff {
                inner,
                first: first.clone(),
            },
            first,
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Sniff<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &r {
            let got = &buf.filled()[before..];
            if let Ok(mut f) = self.first.lock() {
                let room = SNIFF_BYTES.saturating_sub(f.len());
                f.extend_from_slice(&got[..room.min(got.len())]);
            }
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Sniff<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sniff_keeps_the_first_bytes() {
        let data: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\r\n";
        let (mut s, first) = Sniff::new(data);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data);
        assert_eq!(first.lock().unwrap().as_slice(), &data[..SNIFF_BYTES]);
        assert!(starts_with_http(&first));
    }
}
