//! Reverse-proxy mode with real backends (nginx, in-process servers) in two
//! zones: zone preference, a kill of the local zone under a client loop,
//! fallback answers, forwarded headers, and on-the-fly API Gateway signing
//! checked by a local gateway that verifies with the library's `verify`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proxyguard::signer::SignRequest;
use support::*;

fn route_config(
    listen: SocketAddr,
    backends: &[(String, &str)],
    extra_route: &str,
    top: &str,
) -> String {
    let mut s = format!(
        "{top}\n[[listen]]\naddr = \"{}\"\n\n[health]\ninterval = \"300ms\"\n\n[[route]]\nlisten = \"{listen}\"\nlocal_zone = \"zone-a\"\n{extra_route}\n",
        free_addr()
    );
    for (u, z) in backends {
        s.push_str(&format!(
            "[[route.backend]]\nurl = \"{u}\"\nzone = \"{z}\"\nmax_fails = 1\n\n"
        ));
    }
    s
}

fn hey(url: &str, n: usize, c: usize) -> (u64, String) {
    let mut cmd = Command::new("hey");
    cmd.args(["-n", &n.to_string(), "-c", &c.to_string(), "-t", "20", url]);
    let out = run_cmd(cmd, Duration::from_secs(120));
    let ok = out
        .stdout
        .lines()
        .find_map(|l| {
            l.trim().strip_prefix("[200]").map(|r| {
                r.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
            })
        })
        .unwrap_or(0);
    (ok, out.stdout)
}

fn p99(raw: &str) -> f64 {
    raw.lines()
        .find_map(|l| {
            l.trim().strip_prefix("99% in").map(|r| {
                r.split_whitespace()
                    .next()
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    * 1000.0
            })
        })
        .unwrap_or(0.0)
}

#[test]
fn local_zone_preferred_and_killing_it_loses_no_idempotent_request() {
    let mut a1 = Nginx::start();
    let mut a2 = Nginx::start();
    let b1 = Nginx::start();
    let listen = free_addr();
    let cfg = route_config(
        listen,
        &[
            (a1.url(), "zone-a"),
            (a2.url(), "zone-a"),
            (b1.url(), "zone-b"),
        ],
        "",
        "",
    );
    let pg = Proxyguard::start(&cfg);
    let url = format!("http://{listen}/small");
    let (ok, raw) = hey(&url, 500, 4);
    assert_eq!(ok, 500, "{raw}\n{}", pg.logs());
    assert!(wait_until(Duration::from_secs(3), || a1.requests()
        + a2.requests()
        >= 500));
    assert_eq!(b1.requests(), 0, "remote zone used while local was healthy");
    // Kill the local zone under a client loop.
    let u2 = url.clone();
    let load = std::thread::spawn(move || hey(&u2, 3000, 8));
    let before = a1.requests() + a2.requests();
    assert!(wait_until(Duration::from_secs(20), || a1.requests()
        + a2.requests()
        >= before + 500));
    a1.child.kill9();
    a2.child.kill9();
    let (ok, raw) = load.join().unwrap();
    eprintln!(
        "zone kill: 3000 requests, ok={ok}, failed={}, p99={:.1}ms, remote zone served {}",
        3000 - ok,
        p99(&raw),
        b1.requests()
    );
    assert_eq!(ok, 3000, "{raw}\n{}", pg.logs());
    assert!(b1.requests() > 100, "spill to zone-b did not happen");
}

#[test]
fn fallback_serves_last_good_get_then_static_answer() {
    let mut a = Nginx::start();
    let listen = free_addr();
    let cfg = route_config(
        listen,
        &[(a.url(), "zone-a")],
        "[route.fallback]\ncache_get = \"5m\"\nstatus = 503\nbody = \"service temporarily degraded\"\n",
        "",
    );
    let pg = Proxyguard::start(&cfg);
    let r = curl(&[&format!("http://{listen}/small")]);
    assert_eq!((r.status, r.body_len), (200, SMALL_BYTES), "{r:?}");
    a.child.kill9();
    let r = curl(&[&format!("http://{listen}/small")]);
    assert_eq!(
        (r.status, r.body_len),
        (200, SMALL_BYTES),
        "cached GET: {r:?}\n{}",
        pg.logs()
    );
    let h = r.headers.to_ascii_lowercase();
    assert!(
        h.contains("warning: 110")
            && h.contains("proxy-status: proxyguard; error=destination_unavailable"),
        "{h}"
    );
    let r = curl(&[&format!("http://{listen}/never-fetched")]);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.body.trim(), "service temporarily degraded");
    let r = curl(&["-X", "POST", "-d", "x", &format!("http://{listen}/small")]);
    assert_eq!(r.status, 503, "POSTs are never served from cache: {r:?}");
}

#[test]
fn forwarded_headers_host_rewrite_and_via_pool() {
    let echo = EchoServer::start();
    let listen = free_addr();
    let cfg = route_config(listen, &[(echo.url(), "zone-a")], "", "");
    let _pg = Proxyguard::start(&cfg);
    let r = curl(&[
        "-H",
        "X-Forwarded-For: 10.9.8.7",
        &format!("http://{listen}/hdr"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let b = r.body.to_ascii_lowercase();
    assert!(b.contains("x-forwarded-for: 10.9.8.7, 127.0.0.1"), "{b}");
    assert!(
        b.contains("forwarded: for=127.0.0.1;proto=http;host="),
        "{b}"
    );
    assert!(
        b.contains(&format!("host: 127.0.0.1:{}", echo.port())),
        "Host rewritten to the backend: {b}"
    );
    // Through the upstream-proxy pool (via = "pool"), over a real tinyproxy.
    let tiny = Tinyproxy::start(TinyOpts {
        connect_ports: None,
        logged: true,
    });
    let listen = free_addr();
    let mut cfg = route_config(
        listen,
        &[(echo.url(), "zone-a")],
        "via = \"pool\"\nhost = \"keep\"\n",
        "bypass_loopback = false",
    );
    cfg.push_str(&format!(
        "[[upstream]]\nname = \"corp\"\nurl = \"{}\"\n",
        tiny.url()
    ));
    let pg = Proxyguard::start(&cfg);
    let r = curl(&["-H", "Host: api.example", &format!("http://{listen}/via")]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    assert!(
        r.body.to_ascii_lowercase().contains("host: api.example"),
        "{}",
        r.body
    );
    assert!(
        wait_until(Duration::from_secs(3), || tiny.requests() >= 1),
        "tinyproxy not used"
    );
}

/// A local "API Gateway" that verifies X-Ca-* signatures with the library.
struct Gateway {
    addr: SocketAddr,
    last: Arc<Mutex<Option<SignRequest>>>,
    stop: Arc<AtomicBool>,
}

impl Gateway {
    fn start(secret: &'static str) -> Gateway {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let last = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (lst, st) = (last.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let _ = s.set_nonblocking(false);
                let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                let req = loop {
                    let Ok(n) = s.read(&mut buf) else { break None };
                    if n == 0 {
                        break None;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let mut hs = [httparse::EMPTY_HEADER; 64];
                    let mut r = httparse::Request::new(&mut hs);
                    if let Ok(httparse::Status::Complete(len)) = r.parse(&data) {
                        let headers: Vec<(String, String)> = r
                            .headers
                            .iter()
                            .map(|h| {
                                (
                                    h.name.to_string(),
                                    String::from_utf8_lossy(h.value).into_owned(),
                                )
                            })
                            .collect();
                        let cl: usize = headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0);
                        if data.len() >= len + cl {
                            let mut sr =
                                SignRequest::new(r.method.unwrap_or("GET"), r.path.unwrap_or("/"));
                            for (k, v) in headers {
                                sr = sr.with_header(k, v);
                            }
                            break Some(sr.with_body(data[len..len + cl].to_vec()));
                        }
                    }
                };
                let Some(req) = req else { continue };
                let verdict = proxyguard::signer::verify::verify_apigw(&req, secret);
                *lst.lock().unwrap() = Some(req);
                let reply = match verdict {
                    Ok(()) => "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_string(),
                    Err(e) => format!("HTTP/1.1 400 Bad Request\r\nX-Ca-Error-Message: Invalid Signature\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{e}", e.to_string().len()),
                };
                let _ = s.write_all(reply.as_bytes());
            }
        });
        Gateway { addr, last, stop }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn route_signs_requests_and_gateway_verifies() {
    let gw = Gateway::start("route-secret");
    let listen = free_addr();
    let cfg = route_config(
        listen,
        &[(format!("http://{}", gw.addr), "zone-a")],
        "[route.sign]\nscheme = \"apigw\"\nkey = \"203753830\"\nsecret_env = \"APIGW_APP_SECRET\"\nstage = \"TEST\"\n",
        "",
    );
    let pg = Proxyguard::start_with(&cfg, &[], &[("APIGW_APP_SECRET", "route-secret")]);
    assert!(!pg.logs().contains("route-secret"));
    let r = curl(&[
        "-H",
        "Accept: application/json",
        &format!("http://{listen}/demo/get?b=2&a=1&empty="),
    ]);
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, "ok"),
        "{r:?}\n{}",
        pg.logs()
    );
    let r = curl(&[
        "-H",
        "Content-Type: application/json",
        "-d",
        "{\"k\":1}",
        &format!("http://{listen}/demo/post"),
    ]);
    assert_eq!((r.status, r.body.as_str()), (200, "ok"), "{r:?}");
    let signed = gw
        .last
        .lock()
        .unwrap()
        .clone()
        .expect("gateway saw the request");
    assert_eq!(signed.header("x-ca-key"), Some("203753830"));
    assert_eq!(signed.header("x-ca-stage"), Some("TEST"));
    assert!(signed.header("content-md5").is_some());
    proxyguard::signer::verify::verify_apigw(&signed, "route-secret").expect("valid as sent");
    // A tampered body (or the wrong secret) is rejected by the same verifier.
    let mut tampered = signed.clone();
    tampered.body = b"{\"k\":2}".to_vec();
    assert!(proxyguard::signer::verify::verify_apigw(&tampered, "route-secret").is_err());
    assert!(proxyguard::signer::verify::verify_apigw(&signed, "other-secret").is_err());
    // A wrong secret in the route: the gateway refuses.
    let listen = free_addr();
    let cfg = route_config(
        listen,
        &[(format!("http://{}", gw.addr), "zone-a")],
        "[route.sign]\nscheme = \"apigw\"\nkey = \"203753830\"\nsecret_env = \"APIGW_APP_SECRET\"\n",
        "",
    );
    let _pg2 = Proxyguard::start_with(&cfg, &[], &[("APIGW_APP_SECRET", "wrong")]);
    let r = curl(&[&format!("http://{listen}/demo/get")]);
    assert_eq!(r.status, 400, "{r:?}");
}

#[test]
fn sign_cli_compares_with_the_servers_string_to_sign() {
    let base = [
        "sign",
        "--scheme",
        "apigw",
        "--key",
        "203753830",
        "--secret-env",
        "PG_TEST_SECRET",
        "-H",
        "Accept: application/json",
        "--timestamp",
        "1700000000000",
        "--nonce",
        "c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44",
    ];
    let sts = "GET#application/json####x-ca-key:203753830#x-ca-nonce:c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44#x-ca-signature-method:HmacSHA256#x-ca-timestamp:1700000000000#/demo/get?a=1&b=2&empty";
    let env = [("PG_TEST_SECRET", "testsecret")];
    let same = format!("Invalid Signature, Server StringToSign:`{sts}`");
    let mut a: Vec<&str> = base.to_vec();
    a.extend([
        "--compare-server",
        &same,
        "http://gw.example/demo/get?b=2&a=1&empty=",
    ]);
    let out = proxyguard_run(&a, &env, Duration::from_secs(10));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("matches the server's"),
        "{}",
        out.stdout
    );
    // The server signed `empty=` where the spec writes `empty`: shown exactly.
    let differs = format!("Invalid Signature, Server StringToSign:`{sts}=`");
    let mut a: Vec<&str> = base.to_vec();
    a.extend([
        "--compare-server",
        &differs,
        "http://gw.example/demo/get?b=2&a=1&empty=",
    ]);
    let out = proxyguard_run(&a, &env, Duration::from_secs(10));
    assert!(
        out.stdout.contains("differs at line 10") && out.stdout.contains("[=]"),
        "{}",
        out.stdout
    );
    // --explain shows the official vector's signature.
    let mut a: Vec<&str> = base.to_vec();
    a.extend(["--explain", "http://gw.example/demo/get?b=2&a=1&empty="]);
    let out = proxyguard_run(&a, &env, Duration::from_secs(10));
    assert!(
        out.stdout
            .contains("mylrWQPNif4Aq87MYnBRi/h5tsq1fX4QasZafcDbqjw="),
        "{}",
        out.stdout
    );
}

/// One `max_connections` / `max_connections_per_client` for the process: a
/// route's clients take their slots from the same limits as the forward
/// listeners (each route used to have a semaphore of its own, so the
/// configured limit was multiplied by the number of routes).
#[test]
fn routes_share_the_connection_limits_of_the_forward_listeners() {
    let echo = EchoServer::start();
    let route = free_addr();
    let backends = [(echo.url(), "zone-a")];
    let pg = Proxyguard::start(&route_config(
        route,
        &backends,
        "",
        "[limits]\nmax_connections_per_client = 2\n",
    ));
    let tunnel = || {
        let mut s = std::net::TcpStream::connect(pg.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "CONNECT {a} HTTP/1.1\r\nHost: {a}\r\n\r\n",
            a = echo.addr()
        )
        .unwrap();
        let mut buf = [0u8; 128];
        let n = s.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", pg.logs());
        s
    };
    let url = format!("http://{route}/limits");
    assert_eq!(curl(&["-s", "-m", "10", &url]).status, 200);
    // Two live tunnels through the forward listener use this client's two slots.
    let held = [tunnel(), tunnel()];
    let r = curl(&["-s", "-m", "10", &url]);
    assert_eq!(r.status, 0, "the route admitted a third connection: {r:?}");
    drop(held);
    assert!(
        wait_until(Duration::from_secs(10), || curl(&["-s", "-m", "10", &url])
            .status
            == 200),
        "slots not given back when the tunnels closed\n{}",
        pg.logs()
    );
}
