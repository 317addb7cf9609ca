//! HTTP/2 through reverse routes with real clients and servers: curl with
//! h2c prior knowledge and HTTP/1.1 on the same route port, trailers both
//! ways between a hyper HTTP/2 client and an HTTP/2 origin, an HTTPS backend
//! that picks h2 by ALPN, the protocol fallback to HTTP/1.1 for a backend
//! that only speaks HTTP/1.1 (nginx), and WebSocket through a route.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use support::*;

/// An in-process origin answering over HTTP/1.1 and HTTP/2 (h2c prior
/// knowledge, or ALPN with TLS): the body echoed, `x-version` = the HTTP
/// version it saw, and trailers `x-echo-trailer` (the request's
/// `x-client-trailer`) and `x-origin-trailer: done`.
struct H2Origin {
    addr: SocketAddr,
    _rt: tokio::runtime::Runtime,
}

impl H2Origin {
    fn start(tls: Option<rustls::ServerConfig>) -> H2Origin {
        H2Origin::start_alpn(tls, &[b"h2", b"http/1.1"])
    }

    /// With TLS offering `alpn` (empty: the server ignores ALPN).
    fn start_alpn(tls: Option<rustls::ServerConfig>, alpn: &[&[u8]]) -> H2Origin {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_l.set_nonblocking(true).unwrap();
        let addr = std_l.local_addr().unwrap();
        let acceptor = tls.map(|mut c| {
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            tokio_rustls::TlsAcceptor::from(Arc::new(c))
        });
        rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(std_l).unwrap();
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    match acceptor {
                        Some(a) => {
                            if let Ok(s) = a.accept(tcp).await {
                                serve(s).await
                            }
                        }
                        None => serve(tcp).await,
                    }
                });
            }
        });
        H2Origin { addr, _rt: rt }
    }
}

async fn serve<I>(io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let version = format!("{:?}", req.version());
        let all = req.into_body().collect().await?;
        let echoed = all
            .trailers()
            .and_then(|t| t.get("x-client-trailer").cloned())
            .unwrap_or(http::HeaderValue::from_static("none"));
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-echo-trailer", echoed);
        trailers.insert("x-origin-trailer", http::HeaderValue::from_static("done"));
        let frames: Vec<Result<Frame<Bytes>, hyper::Error>> = vec![
            Ok(Frame::data(all.to_bytes())),
            Ok(Frame::trailers(trailers)),
        ];
        let mut resp = http::Response::new(StreamBody::new(futures_util::stream::iter(frames)));
        resp.headers_mut()
            .insert("x-version", version.parse().unwrap());
        Ok::<_, hyper::Error>(resp)
    });
    let _ = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
        .await;
}

fn route(listen: SocketAddr, admin: SocketAddr, backend: &str, extra: &str) -> String {
    format!(
        "[[listen]]\naddr = \"{}\"\n\n[admin]\naddr = \"{admin}\"\n\n[[route]]\nlisten = \"{listen}\"\n{extra}\n[[route.backend]]\nurl = \"{backend}\"\n",
        free_addr()
    )
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let r = curl(&["-s", &format!("http://{admin}/status")]);
    serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null)
}

#[test]
fn h2c_prior_knowledge_and_http1_on_the_same_route_port() {
    let echo = EchoServer::start();
    let (listen, admin) = (free_addr(), free_addr());
    let pg = Proxyguard::start(&route(
        listen,
        admin,
        &format!("http://{}", echo.addr()),
        "",
    ));
    let url = format!("http://{listen}/hello");
    let h2 = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!(h2.status, 200, "{h2:?}\n{}", pg.logs());
    assert!(h2.headers.starts_with("HTTP/2 200"), "{}", h2.headers);
    assert!(
        h2.body.contains(&format!("x-forwarded-host: {listen}")),
        "the :authority becomes X-Forwarded-Host: {}",
        h2.body
    );
    assert!(
        h2.body.starts_with("GET /hello HTTP/1.1"),
        "sent on over HTTP/1.1: {}",
        h2.body
    );
    let h1 = curl(&["--http1.1", &url]);
    assert_eq!(h1.status, 200, "{h1:?}");
    assert!(h1.headers.starts_with("HTTP/1.1 200"), "{}", h1.headers);
    // A POST body over h2c arrives whole.
    let post = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        "0123456789",
        &url,
    ]);
    assert!(post.body.contains("body-length: 10"), "{post:?}");
}

#[test]
fn trailers_pass_both_ways_over_h2c() {
    let origin = H2Origin::start(None);
    let (listen, admin) = (free_addr(), free_addr());
    let backend = format!("h2c://{}", origin.addr);
    let pg = Proxyguard::start(&route(listen, admin, &backend, ""));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (version, all) = rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
        let (mut tx, conn) = hyper::client::conn::http2::handshake::<_, _, StreamBody<_>>(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            "x-client-trailer",
            http::HeaderValue::from_static("from-client"),
        );
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"payload"))),
            Ok(Frame::trailers(trailers)),
        ];
        let req = http::Request::post(format!("http://{listen}/t"))
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(20), tx.send_request(req))
            .await
            .expect("hang guard")
            .unwrap_or_else(|e| panic!("{e}\n{}", pg.logs()));
        assert_eq!(resp.status(), 200);
        let version = resp.headers()["x-version"].clone();
        (version, resp.into_body().collect().await.unwrap())
    });
    assert_eq!(version, "HTTP/2.0", "h2c to the backend");
    let t = all
        .trailers()
        .cloned()
        .expect("response trailers reached the client");
    assert_eq!(
        t["x-echo-trailer"], "from-client",
        "request trailers reached the origin"
    );
    assert_eq!(t["x-origin-trailer"], "done");
    assert_eq!(all.to_bytes(), "payload");
    let st = status(admin);
    assert_eq!(st["routes"][0]["backends"][0]["protocol"], "h2c", "{st}");
}

#[test]
fn https_backend_speaks_h2_when_alpn_picks_it() {
    let ca = TestCa::new();
    let origin = H2Origin::start(Some(ca.server_config()));
    let (listen, admin) = (free_addr(), free_addr());
    let extra = format!("ca_file = \"{}\"\n", ca.ca_path().display());
    let backend = format!("https://localhost:{}", origin.addr.port());
    let pg = Proxyguard::start(&route(listen, admin, &backend, &extra));
    let r = curl(&["--http1.1", &format!("http://{listen}/x")]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("x-version: http/2.0"),
        "{}",
        r.headers
    );
    let st = status(admin);
    assert_eq!(st["routes"][0]["backends"][0]["protocol"], "h2", "{st}");
}

#[test]
fn http1_only_backend_behind_an_h2_route_falls_back_and_logs_once() {
    let nginx = Nginx::start();
    let h2c = nginx.url().replacen("http://", "h2c://", 1);
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = route(
        listen,
        admin,
        &h2c,
        "[route.fallback]\nprotocol = \"http1\"\n",
    );
    let pg = Proxyguard::start(&cfg);
    for i in 0..10 {
        let r = curl(&[&format!("http://{listen}/small")]);
        assert_eq!(r.status, 200, "request {i}: {r:?}\n{}", pg.logs());
    }
    // nginx logs the one h2 attempt (the preface) as a bad request, then
    // the ten requests over HTTP/1.1.
    assert!(wait_until(Duration::from_secs(5), || nginx.requests() >= 11));
    let log = nginx.access_log();
    assert_eq!(nginx.requests(), 11, "{log}");
    assert_eq!(
        log.matches("PRI * HTTP/2.0").count(),
        1,
        "one failed h2 attempt: {log}"
    );
    assert_eq!(log.matches("GET /small HTTP/1.1").count(), 10, "{log}");
    let logged = pg
        .logs()
        .lines()
        .filter(|l| l.contains("protocol fallback to HTTP/1.1"))
        .count();
    assert_eq!(logged, 1, "one log line per downgrade\n{}", pg.logs());
    let st = status(admin);
    assert_eq!(
        st["routes"][0]["backends"][0]["protocol"], "http1 (fallback)",
        "{st}"
    );

    // A [route.fallback] with only `protocol` keeps the 502 when nothing serves.
    let mut nginx = nginx;
    nginx.child.kill9();
    let r = curl(&[&format!("http://{listen}/small")]);
    assert_eq!(r.status, 502, "{r:?}");
    let nginx = Nginx::start();
    let h2c = nginx.url().replacen("http://", "h2c://", 1);

    // Without the fallback the same backend fails: h2 is all the route tries.
    let (listen2, admin2) = (free_addr(), free_addr());
    let _pg2 = Proxyguard::start(&route(listen2, admin2, &h2c, ""));
    let r = curl(&[&format!("http://{listen2}/small")]);
    assert_eq!(r.status, 502, "{r:?}");
}

const WS_SERVER: &str = r#"
import asyncio, sys, websockets
async def echo(ws):
    async for m in ws:
        await ws.send("echo:" + m)
async def main():
    async with websockets.serve(echo, "127.0.0.1", int(sys.argv[1])):
        print("READY", flush=True)
        await asyncio.Future()
asyncio.run(main())
"#;

const WS_CLIENT: &str = r#"
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1], open_timeout=10, close_timeout=5) as ws:
        for m in ("one", "two"):
            await ws.send(m)
            print(await asyncio.wait_for(ws.recv(), 10), flush=True)
    print("CLOSED", ws.close_code, flush=True)
asyncio.run(main())
"#;

const WS_IDLE_CLIENT: &str = r#"
import asyncio, sys, websockets
async def main():
    async with websockets.connect(sys.argv[1], open_timeout=10, ping_interval=None) as ws:
        await ws.send("one")
        print(await asyncio.wait_for(ws.recv(), 10), flush=True)
        await asyncio.sleep(3)
        try:
            await asyncio.wait_for(ws.recv(), 10)
            print("STILL OPEN", flush=True)
        except websockets.ConnectionClosed:
            print("CLOSED BY THE GATEWAY", flush=True)
asyncio.run(main())
"#;

#[test]
fn websocket_upgrade_through_a_route() {
    let dir = temp_dir("ws", false);
    write_file(&dir.path().join("server.py"), WS_SERVER, 0o644);
    write_file(&dir.path().join("client.py"), WS_CLIENT, 0o644);
    let port = free_port();
    let mut cmd = std::process::Command::new(support::grpc::PYTHON);
    cmd.arg(dir.path().join("server.py")).arg(port.to_string());
    let server = Child::spawn_env("ws-server", cmd, dir.path(), &[]);
    assert!(
        wait_until(Duration::from_secs(20), || server
            .stdout()
            .contains("READY")),
        "python3-websockets server did not start\n{}",
        server.log()
    );
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = route(listen, admin, &format!("http://127.0.0.1:{port}"), "");
    let pg = Proxyguard::start(&format!("{cfg}\n[timeouts]\nidle = \"1s\"\n"));
    let mut cmd = std::process::Command::new(support::grpc::PYTHON);
    cmd.arg(dir.path().join("client.py"))
        .arg(format!("ws://{listen}/chat"));
    let out = run_cmd(cmd, Duration::from_secs(60));
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        vec!["echo:one", "echo:two", "CLOSED 1000"],
        "{out:?}\n{}\n{}",
        server.log(),
        pg.logs()
    );
    assert!(
        wait_until(Duration::from_secs(5), || pg
            .logs()
            .contains("reverse_upgrade")),
        "the relay's end is logged\n{}",
        pg.logs()
    );
    // A silent WebSocket is cut after [timeouts] idle (1 s here).
    write_file(&dir.path().join("idle.py"), WS_IDLE_CLIENT, 0o644);
    let mut cmd = std::process::Command::new(support::grpc::PYTHON);
    cmd.arg(dir.path().join("idle.py"))
        .arg(format!("ws://{listen}/idle"));
    let out = run_cmd(cmd, Duration::from_secs(60));
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        vec!["echo:one", "CLOSED BY THE GATEWAY"],
        "{out:?}\n{}",
        pg.logs()
    );
    assert!(
        wait_until(Duration::from_secs(5), || pg
            .logs()
            .contains("\"end\":\"idle_timeout\"")),
        "{}",
        pg.logs()
    );
}

#[test]
fn tls_route_listener_offers_h2_by_alpn_and_reloads_on_sighup() {
    let ca1 = TestCa::new();
    let ca2 = TestCa::with_name("second CA");
    let echo = EchoServer::start();
    let dir = temp_dir("route-tls", false);
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    write_file(&cert, &ca1.default_leaf.cert_pem, 0o644);
    write_file(&key, &ca1.default_leaf.key_pem, 0o600);
    let (listen, admin) = (free_addr(), free_addr());
    let extra = format!(
        "cert = \"{}\"\nkey = \"{}\"\n",
        cert.display(),
        key.display()
    );
    let pg = Proxyguard::start(&route(
        listen,
        admin,
        &format!("http://{}", echo.addr()),
        &extra,
    ));
    let url = format!("https://127.0.0.1:{}/tls", listen.port());
    let ca1_pem = ca1.ca_path().display().to_string();
    let h2 = curl(&["--http2", "--cacert", &ca1_pem, &url]);
    assert_eq!(h2.status, 200, "{h2:?}\n{}", pg.logs());
    assert!(
        h2.headers.starts_with("HTTP/2 200"),
        "ALPN h2: {}",
        h2.headers
    );
    assert!(h2.body.contains("x-forwarded-proto: https"), "{}", h2.body);
    let h1 = curl(&["--http1.1", "--cacert", &ca1_pem, &url]);
    assert!(h1.headers.starts_with("HTTP/1.1 200"), "{h1:?}");
    let untrusted = curl(&[&url]);
    assert_eq!(
        untrusted.status, 0,
        "an unknown CA is refused: {untrusted:?}"
    );

    write_file(&key, &ca2.default_leaf.key_pem, 0o600);
    write_file(&cert, &ca2.default_leaf.cert_pem, 0o644);
    pg.child.signal(libc::SIGHUP);
    let ca2_pem = ca2.ca_path().display().to_string();
    assert!(
        wait_until(Duration::from_secs(15), || curl(&[
            "--cacert", &ca2_pem, &url
        ])
        .status
            == 200),
        "the new certificate was never served\n{}",
        pg.logs()
    );
    assert_eq!(
        curl(&["--cacert", &ca1_pem, &url]).status,
        0,
        "the old one still is"
    );
}

#[test]
fn h2_backend_whose_alpn_refuses_h2_falls_back_only_when_allowed() {
    let ca = TestCa::new();
    let echo = EchoServer::tls(&ca); // HTTP/1.1 only, no ALPN
    let backend = format!("h2://127.0.0.1:{}", echo.addr().port());
    let ca_line = format!("ca_file = \"{}\"\n", ca.ca_path().display());
    let (listen, admin) = (free_addr(), free_addr());
    let with = format!("{ca_line}[route.fallback]\nprotocol = \"http1\"\n");
    let pg = Proxyguard::start(&route(listen, admin, &backend, &with));
    for _ in 0..5 {
        let r = curl(&[&format!("http://{listen}/alpn")]);
        assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
        assert!(r.body.starts_with("GET /alpn HTTP/1.1"), "{}", r.body);
    }
    let logged = pg
        .logs()
        .lines()
        .filter(|l| l.contains("protocol fallback to HTTP/1.1") && l.contains("ALPN"))
        .count();
    assert_eq!(logged, 1, "{}", pg.logs());
    assert_eq!(
        status(admin)["routes"][0]["backends"][0]["protocol"],
        "http1 (fallback)"
    );

    let (listen2, admin2) = (free_addr(), free_addr());
    let pg2 = Proxyguard::start(&route(listen2, admin2, &backend, &ca_line));
    let r = curl(&[&format!("http://{listen2}/alpn")]);
    assert_eq!(r.status, 502, "h2:// without fallback needs h2: {r:?}");
    // A server that knows ALPN refuses the handshake (no protocol in
    // common); one without ALPN would be refused by proxyguard.
    assert!(
        r.body.contains("NoApplicationProtocol") || r.body.contains("did not agree to HTTP/2"),
        "{}\n{}",
        r.body,
        pg2.logs()
    );

    // A TLS server that ignores ALPN: the handshake succeeds, not on h2.
    let no_alpn = H2Origin::start_alpn(Some(ca.server_config()), &[]);
    let backend = format!("h2://127.0.0.1:{}", no_alpn.addr.port());
    let (listen3, admin3) = (free_addr(), free_addr());
    let pg3 = Proxyguard::start(&route(listen3, admin3, &backend, &ca_line));
    let r = curl(&[&format!("http://{listen3}/alpn")]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.body.contains("did not agree to HTTP/2"),
        "{}\n{}",
        r.body,
        pg3.logs()
    );
    let (listen4, admin4) = (free_addr(), free_addr());
    let pg4 = Proxyguard::start(&route(listen4, admin4, &backend, &with));
    let r = curl(&[&format!("http://{listen4}/alpn")]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg4.logs());
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("x-version: http/1.1"),
        "{}",
        r.headers
    );
}
