//! A small HTTP/1 client for the admin API (`status`, `reload`): loopback
//! or a named host, bearer token when given, 5 s deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

/// Why the admin API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no host in {0}")]
    NoHost(String),
    #[error("cannot connect to {addr}: {source} (is `proxyguard serve` running with its admin API there?)")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("HTTP error talking to {addr}: {msg}")]
    Http { addr: String, msg: String },
    #[error("no answer from {0} within 5 s")]
    Timeout(String),
}

/// An answer: status code and body text.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends `method` to `base` + `path` (e.g. `/status`) and reads the answer.
pub async fn request(
    base: &url::Url,
    method: http::Method,
    path: &str,
    token: Option<&str>,
) -> Result<Answer, ClientError> {
    let host = base
        .host_str()
        .ok_or_else(|| ClientError::NoHost(base.to_string()))?
        .to_string();
    let port = base.port_or_known_default().unwrap_or(80);
    let addr = format!("{host}:{port}");
    let http_err = |e: &dyn std::fmt::Display| ClientError::Http {
        addr: addr.clone(),
        msg: e.to_string(),
    };
    let fut = async {
        let connect_host = host.trim_start_matches('[').trim_end_matches(']');
        let s = tokio::net::TcpStream::connect((connect_host, port))
            .await
            .map_err(|source| ClientError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let (mut tx, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
            hyper_util::rt::TokioIo::new(s),
        )
        .await
        .map_err(|e| http_err(&e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let full = format!("{}{}", base.path().trim_end_matches('/'), path);
        let mut req = http::Request::builder()
            .method(method)
            .uri(full)
            .header(http::header::HOST, addr.clone());
        if let Some(t) = token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Empty::new()).map_err(|e| http_err(&e))?;
        let resp = tx.send_request(req).await.map_err(|e| http_err(&e))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| http_err(&e))?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .map_err(|_| ClientError::Timeout(addr.clone()))?
}

/// Runs [`request`] on a fresh current-thread runtime (for the CLI).
pub fn request_blocking(
    base: &url::Url,
    method: http::Method,
    path: &str,
    token: Option<&str>,
) -> Result<Answer, ClientError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Http {
            addr: base.to_string(),
            msg: format!("cannot start runtime: {e}"),
        })?;
    rt.block_on(request(base, method, path, token))
}
