//! An in-process echo origin (HTTP and TLS).

use super::*;

#[derive(Default)]
pub struct EchoState {
    requests: AtomicUsize,
    connections: AtomicUsize,
    last: Mutex<Option<String>>,
}

/// In-process HTTP/1.1 origin on its own thread + tokio runtime (so it works
/// from sync tests and from `#[tokio::test]` alike).
///
/// Every request gets 200 and a text body:
/// ```text
/// GET /path HTTP/1.1          <- request line as received (origin- or absolute-form)
/// host: 127.0.0.1:P           <- every header, one per line, names lowercase
/// ...
///                             <- blank line
/// body-length: N              <- request body length
/// ```
/// Special paths: `/status/NNN` answers status NNN (same body, empty for
/// 1xx/204/304), `/delay/MS` sleeps MS (max 60000) before answering,
/// `/bytes/N` answers N pattern bytes (max 512 MiB) instead of the echo.
pub struct EchoServer {
    addr: SocketAddr,
    tls: bool,
    state: Arc<EchoState>,
    rt: Option<tokio::runtime::Runtime>,
}

impl EchoServer {
    /// Plain HTTP.
    pub fn start() -> EchoServer {
        EchoServer::start_inner(None)
    }

    /// HTTPS with the CA's default leaf.
    pub fn tls(ca: &TestCa) -> EchoServer {
        EchoServer::start_inner(Some(Arc::new(ca.server_config())))
    }

    /// HTTPS with a given leaf (expired / wrong name ...).
    pub fn tls_leaf(leaf: &Leaf) -> EchoServer {
        EchoServer::start_inner(Some(Arc::new(leaf.server_config())))
    }

    fn start_inner(tls: Option<Arc<rustls::ServerConfig>>) -> EchoServer {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("echo-server")
            .enable_all()
            .build()
            .unwrap();
        let std_l = TcpListener::bind("127.0.0.1:0").unwrap();
        std_l.set_nonblocking(true).unwrap();
        let addr = std_l.local_addr().unwrap();
        let state = Arc::new(EchoState::default());
        let is_tls = tls.is_some();
        let st = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_l).unwrap();
            let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                serve_echo(s, st).await;
                            }
                        }
                        None => serve_echo(tcp, st).await,
                    }
                });
            }
        });
        EchoServer {
            addr,
            tls: is_tls,
            state,
            rt: Some(rt),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// `http://127.0.0.1:P` or `https://127.0.0.1:P`
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }
    /// Requests received so far (counted on receipt, before any `/delay`).
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
    /// Echo text of the most recently received request.
    pub fn last_request(&self) -> Option<String> {
        self.state.last.lock().unwrap().clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve_echo<S>(io: S, st: Arc<EchoState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, std::convert::Infallible>(echo_response(req, &st).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .with_upgrades()
        .await;
}

async fn echo_response(
    req: hyper::Request<hyper::body::Incoming>,
    st: &EchoState,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        text += &format!("{}: {}\n", name, String::from_utf8_lossy(value.as_bytes()));
    }
    let path = req.uri().path().to_string();
    let body_len = match req.into_body().collect().await {
        Ok(b) => b.to_bytes().len(),
        Err(_) => 0,
    };
    text += &format!("\nbody-length: {body_len}\n");
    st.requests.fetch_add(1, Ordering::SeqCst);
    *st.last.lock().unwrap() = Some(text.clone());

    let mut status = 200u16;
    let mut body = bytes::Bytes::from(text);
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    match (parts.next(), parts.next()) {
        (Some("status"), Some(code)) => {
            if let Ok(c) = code.parse::<u16>() {
                if (200..=999).contains(&c) {
                    status = c;
                }
            }
            if status == 204 || status == 304 {
                body = bytes::Bytes::new();
            }
        }
        (Some("delay"), Some(ms)) => {
            let ms = ms.parse::<u64>().unwrap_or(0).min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        (Some("bytes"), Some(n)) => {
            let n = n.parse::<usize>().unwrap_or(0).min(512 << 20);
            body = bytes::Bytes::from(pattern_bytes(n));
        }
        _ => {}
    }
    hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header(
            "x-echo-requests",
            st.requests.load(Ordering::SeqCst).to_string(),
        )
        .body(http_body_util::Full::new(body))
        .unwrap()
}
