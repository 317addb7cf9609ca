//! proxyguard serve against real clients (curl, Go net/http) and real
//! upstreams (tinyproxy, squid, dante, microsocks), all on loopback.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

fn config(listen: &str, protocol: &str, upstreams: &[&str], extra: &str) -> String {
    // Top-level keys of `extra` must precede every table, so it goes first.
    // Targets are loopback servers: let them go through the upstreams.
    let mut s = format!("bypass_loopback = false\n{extra}\n[[listen]]\naddr = \"{listen}\"\nprotocol = \"{protocol}\"\n\n");
    for (i, u) in upstreams.iter().enumerate() {
        s.push_str(&format!("[[upstream]]\nname = \"u{i}\"\nurl = \"{u}\"\n\n"));
    }
    s
}

fn start(protocol: &str, upstreams: &[&str], extra: &str) -> Proxyguard {
    let addr = free_addr();
    Proxyguard::start(&config(&addr.to_string(), protocol, upstreams, extra))
}

fn proxy_http(pg: &Proxyguard) -> String {
    format!("http://{}", pg.addr())
}

fn proxy_socks(pg: &Proxyguard) -> String {
    format!("socks5h://{}", pg.addr())
}

/// curl through `proxy` to nginx: plain HTTP and CONNECT + TLS.
fn assert_both(proxy: &str, nginx: &Nginx, pg: &Proxyguard) {
    let r = curl(&["-x", proxy, &format!("{}/small", nginx.url())]);
    assert_eq!(
        (r.status, r.body_len),
        (200, SMALL_BYTES),
        "{r:?}\n{}",
        pg.logs()
    );
    let ca = nginx.ca().ca_path();
    let r = curl(&[
        "-x",
        proxy,
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/small", nginx.https_url()),
    ]);
    assert_eq!(
        (r.status, r.body_len),
        (200, SMALL_BYTES),
        "{r:?}\n{}",
        pg.logs()
    );
}

#[test]
fn curl_through_http_socks5_and_mixed_listeners() {
    let nginx = Nginx::start();
    let http = start("http", &[], "");
    assert_both(&proxy_http(&http), &nginx, &http);
    let socks = start("socks5", &[], "");
    assert_both(&proxy_socks(&socks), &nginx, &socks);
    // socks5:// (client resolves) with an IPv4 address type.
    assert_both(&format!("socks5://{}", socks.addr()), &nginx, &socks);
    let mixed = start("mixed", &[], "");
    assert_both(&proxy_http(&mixed), &nginx, &mixed);
    assert_both(&proxy_socks(&mixed), &nginx, &mixed);
    // Big body through a tunnel arrives whole.
    let r = curl(&["-x", &proxy_http(&mixed), &format!("{}/big", nginx.url())]);
    assert_eq!(r.body_len, nginx.big_bytes(), "{r:?}");
    // One access line per request with bytes and outcome, JSON logs.
    let logs = mixed.json_logs();
    assert!(
        logs.iter()
            .any(|l| l["kind"] == "connect" && l["bytes_down"].as_u64().unwrap_or(0) > 0),
        "{}",
        mixed.logs()
    );
}

#[test]
fn socks5_ipv6_address_type() {
    let echo = EchoServer::start();
    let pg = start("socks5", &[], "");
    // A SOCKS5 CONNECT with ATYP 4 (IPv6) to [::1]: nothing listens there on
    // the echo port unless IPv6 works, so accept either a success or a
    // refused reply code — but the reply must be a well-formed SOCKS5 reply.
    let mut s = TcpStream::connect(pg.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    assert_eq!(b, [5, 0]);
    let mut req = vec![5, 1, 0, 4];
    req.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    req.extend_from_slice(&echo.port().to_be_bytes());
    s.write_all(&req).unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[0], 5);
    assert!(head[1] == 0 || head[1] == 5, "reply {head:?}");
}

#[test]
fn go_client_http_and_https_through_proxyguard() {
    let nginx = Nginx::start();
    let extra = "[resolve]\n\"origin.test\" = \"127.0.0.1\"\n";
    let pg = start("mixed", &[], extra);
    let ca = nginx.ca().ca_path();
    let r = GoClient::run(
        &GoOpts::new(&format!("http://origin.test:{}/small", nginx.port()))
            .n(50)
            .c(5)
            .proxy(&proxy_http(&pg)),
    );
    assert_eq!((r.ok, r.failed), (50, 0), "{r:?}\n{}", pg.logs());
    let r = GoClient::run(
        &GoOpts::new(&format!("https://origin.test:{}/small", nginx.https_port()))
            .n(50)
            .c(5)
            .cafile(ca)
            .proxy(&proxy_http(&pg)),
    );
    assert_eq!((r.ok, r.failed), (50, 0), "{r:?}\n{}", pg.logs());
    assert!(nginx.requests() >= 100);
}

#[test]
fn chains_through_tinyproxy_and_squid() {
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts {
        connect_ports: None,
        logged: true,
    });
    let pg = start("mixed", &[&tiny.url()], "");
    assert_both(&proxy_http(&pg), &nginx, &pg);
    assert_both(&proxy_socks(&pg), &nginx, &pg);
    assert!(
        wait_until(Duration::from_secs(3), || tiny.requests() >= 4),
        "tinyproxy saw {} requests\n{}",
        tiny.requests(),
        tiny.log()
    );

    let squid = Squid::start(None);
    let pg = start("mixed", &[&squid.url()], "");
    assert_both(&proxy_http(&pg), &nginx, &pg);
}

#[test]
fn squid_with_basic_auth_right_and_wrong_credentials() {
    let nginx = Nginx::start();
    let squid = Squid::start(Some(("pguser", "pa:ss@word")));
    // Right credentials, percent-encoded in the upstream URL.
    let good = format!("http://pguser:pa%3Ass%40word@{}", squid.addr());
    let pg = start("mixed", &[&good], "");
    assert_both(&proxy_http(&pg), &nginx, &pg);
    assert!(
        !pg.logs().contains("pa:ss@word") && !pg.logs().contains("pa%3Ass"),
        "secret in logs"
    );

    // Wrong credentials: CONNECT gets a 502 naming proxy auth, plain HTTP too.
    let bad = format!("http://pguser:wrong@{}", squid.addr());
    let pg = start("mixed", &[&bad], "");
    let ca = nginx.ca().ca_path();
    let r = curl(&[
        "-x",
        &proxy_http(&pg),
        "--cacert",
        ca.to_str().unwrap(),
        &format!("{}/small", nginx.https_url()),
    ]);
    assert_eq!(r.connect_status, 502, "{r:?}");
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("proxy-status: proxyguard; error=proxy_auth_required"),
        "{r:?}"
    );
    assert!(!pg.logs().contains("wrong"), "secret in logs");
    // Plain HTTP: squid's 407 is our upstream's auth failure, not the
    // client's: it becomes a 502 naming proxy auth, like CONNECT.
    let r = curl(&["-x", &proxy_http(&pg), &format!("{}/small", nginx.url())]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.headers.contains("error=proxy_auth_required"), "{r:?}");
}

#[test]
fn chains_through_dante_and_microsocks_with_and_without_auth() {
    let nginx = Nginx::start();
    let dante = Dante::start(None);
    let pg = start(
        "mixed",
        &[&dante.url().replace("socks5://", "socks5h://")],
        "",
    );
    assert_both(&proxy_http(&pg), &nginx, &pg);
    let dante_auth = Dante::start(Some(("pgtest", "pgtest-pass")));
    let pg = start("mixed", &[&dante_auth.url()], "");
    assert_both(&proxy_socks(&pg), &nginx, &pg);

    let ms = Microsocks::start(None);
    let pg = start("mixed", &[&ms.url()], "");
    assert_both(&proxy_http(&pg), &nginx, &pg);
    let ms_auth = Microsocks::start(Some(("msu", "msp")));
    let pg = start("mixed", &[&ms_auth.url()], "");
    assert_both(&proxy_http(&pg), &nginx, &pg);
    // Wrong SOCKS credentials: 502 with proxy_auth_required.
    let bad = format!("socks5://msu:nope@{}", ms_auth.addr());
    let pg = start("mixed", &[&bad], "");
    let r = curl(&["-x", &proxy_http(&pg), &format!("{}/small", nginx.url())]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.headers.contains("error=proxy_auth_required"), "{r:?}");
}

#[test]
fn no_proxy_bypass_goes_direct_and_upstream_sees_nothing() {
    // In a namespace whose only resolver is a dnsmasq on its loopback that
    // knows no names: the lookup of sub.bypass.test below never leaves the
    // machine and gets a real NXDOMAIN.
    let ns = support::netns::Netns::new();
    let _inside = ns.enter();
    let _dns = support::netns::NsDns::start("");
    let echo = EchoServer::start();
    let tiny = Tinyproxy::start(TinyOpts {
        connect_ports: None,
        logged: true,
    });
    let extra = "no_proxy = [\"bypass.test\"]\n[resolve]\n\"bypass.test\" = \"127.0.0.1\"\n\"via.test\" = \"127.0.0.1\"\n";
    let pg = start("mixed", &[&tiny.url()], extra);
    // Go semantics: 127.x is never proxied, so the bypass case is by name.
    let r = curl(&[
        "-x",
        &proxy_http(&pg),
        &format!("http://bypass.test:{}/x", echo.port()),
    ]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    let r = curl(&[
        "-x",
        &proxy_http(&pg),
        &format!("http://sub.bypass.test:{}/x", echo.port()),
    ]);
    // sub.bypass.test has no resolve override and no DNS record: it must
    // fail as a direct DNS error, proving it was not sent to tinyproxy either.
    assert_eq!(r.status, 502, "{r:?}");
    assert!(r.headers.contains("error=dns_error"), "{r:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        tiny.requests(),
        0,
        "tinyproxy saw a bypassed request\n{}",
        tiny.log()
    );
    assert_eq!(echo.requests(), 1);
}

#[test]
fn headers_hop_by_hop_removed_credentials_not_leaked_via_added() {
    let echo = EchoServer::start();
    let pg = start(
        "http",
        &[],
        "[http]\nvia = true\n[auth]\nusers = [\"alice:s3cret\"]\n",
    );
    let r = curl(&[
        "-x",
        &proxy_http(&pg),
        "--proxy-user",
        "alice:s3cret",
        "-H",
        "Connection: keep-alive, X-Drop-Me",
        "-H",
        "X-Drop-Me: 1",
        "-H",
        "Keep-Alive: timeout=5",
        "-H",
        "X-Keep: yes",
        &format!("{}/echo", echo.url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    let b = r.body.to_ascii_lowercase();
    assert!(
        b.contains("get /echo http/1.1"),
        "origin-form upstream: {b}"
    );
    assert!(b.contains("x-keep: yes"), "{b}");
    assert!(b.contains("via: 1.1 proxyguard"), "{b}");
    for h in [
        "proxy-authorization",
        "x-drop-me",
        "keep-alive",
        "proxy-connection",
    ] {
        assert!(!b.contains(&format!("{h}:")), "{h} leaked: {b}");
    }
    // Without credentials: 407 with a Basic challenge.
    let r = curl(&["-x", &proxy_http(&pg), &format!("{}/echo", echo.url())]);
    assert_eq!(r.status, 407, "{r:?}");
    assert!(r.headers.contains("Basic realm"), "{r:?}");
    // SOCKS5 with RFC 1929 credentials.
    let pg = start("socks5", &[], "[auth]\nusers = [\"alice:s3cret\"]\n");
    let r = curl(&[
        "-x",
        &format!("socks5h://alice:s3cret@{}", pg.addr()),
        &format!("{}/x", echo.url()),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let r = curl(&[
        "-x",
        &format!("socks5h://alice:bad@{}", pg.addr()),
        &format!("{}/x", echo.url()),
    ]);
    assert_ne!(r.exit_code, 0, "{r:?}");
    assert!(!pg.logs().contains("s3cret"));
}

#[test]
fn keep_alive_both_sides_reuses_upstream_connections() {
    let echo = EchoServer::start();
    let pg = start("http", &[], "");
    let u = format!("{}/a", echo.url());
    // curl reuses its client connection for several URLs in one invocation.
    let r = curl(&["-x", &proxy_http(&pg), &u, &u, &u, &u]);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(echo.requests(), 4);
    assert_eq!(echo.connections(), 1, "upstream connection was not reused");
}

/// A round-robin pool must still reuse upstream connections: each request
/// takes an idle connection on any route its plan allows before dialling,
/// so 8 keep-alive clients × 50 requests open a handful of connections, not
/// one per request.
#[test]
fn pool_round_robin_reuses_upstream_connections() {
    let echo = EchoServer::start();
    let pg = start(
        "http",
        &["direct", "direct", "direct"],
        // Counts requests and connections exactly: no hedge may add one
        // when a loaded machine makes an answer slow.
        "[pool]\nstrategy = \"round_robin\"\nhedge_after = \"off\"\n",
    );
    let u = format!("{}/r", echo.url());
    let proxy = proxy_http(&pg);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (p, u) = (proxy.clone(), u.clone());
            std::thread::spawn(move || {
                let mut args = vec!["-x".to_string(), p];
                args.extend(std::iter::repeat_n(u, 50));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                curl(&args)
            })
        })
        .collect();
    for c in clients {
        let r = c.join().unwrap();
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert_eq!(echo.requests(), 400);
    // At most one connection per client per upstream, 8 × 3 = 24.
    assert!(
        echo.connections() <= 24,
        "{} upstream connections for 400 requests on 8 client connections",
        echo.connections()
    );
}

#[test]
fn unreachable_upstream_gets_prompt_502_with_proxy_status() {
    let dead = free_addr(); // nothing listens here
    let pg = start("mixed", &[&format!("http://{dead}")], "");
    let t = Instant::now();
    let r = curl(&["-x", &proxy_http(&pg), "http://127.0.0.2:9/x"]);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("proxy-status: proxyguard; error=connection_refused"),
        "{r:?}"
    );
    assert!(r.body.contains("refused"), "{r:?}");
    assert!(t.elapsed() < Duration::from_secs(3));
    // SOCKS5 client gets reply code 5 (connection refused).
    let mut s = TcpStream::connect(pg.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    s.write_all(&[
        5, 1, 0, 3, 7, b'x', b'.', b'e', b'x', b'a', b'm', b'p', 0, 80,
    ])
    .unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[..2], [5, 5]);
    // Direct to a closed port: also 502 connection_refused, fast.
    let pg = start("http", &[], "");
    let closed = free_addr();
    let r = curl(&["-x", &proxy_http(&pg), &format!("http://{closed}/")]);
    assert_eq!(r.status, 502, "{r:?}");
    let r = curl(&["-x", &proxy_http(&pg), "-p", &format!("http://{closed}/")]);
    assert_eq!(r.connect_status, 502, "{r:?}");
}

fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn bad_input_gets_errors_and_service_continues() {
    let echo = EchoServer::start();
    let pg = start("mixed", &[], "[timeouts]\nclient_header = \"1s\"\n");
    let ok = || {
        let r = curl(&["-x", &proxy_http(&pg), &format!("{}/ok", echo.url())]);
        assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    };
    let out = raw(pg.addr(), b"GARBAGE\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    ok();
    let out = raw(pg.addr(), b"GET /relative HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("forward proxy"),
        "{out:?}"
    );
    let big = format!(
        "GET http://127.0.0.1:{}/ HTTP/1.1\r\nX-Big: {}\r\n\r\n",
        echo.port(),
        "a".repeat(100_000)
    );
    let out = raw(pg.addr(), big.as_bytes());
    assert!(
        out.starts_with("HTTP/1.1 431"),
        "{:?}",
        &out[..out.len().min(100)]
    );
    ok();
    let out = raw(pg.addr(), b"CONNECT nohost HTTP/1.1\r\n\r\n");
    assert!(out.starts_with("HTTP/1.1 400"), "{out:?}");
    // SOCKS5 garbage: bad version after the first byte, and a bad command.
    let mut s = TcpStream::connect(pg.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).unwrap();
    s.write_all(&[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]).unwrap(); // BIND
    let mut head = [0u8; 4];
    s.read_exact(&mut head).unwrap();
    assert_eq!(head[..2], [5, 7], "command not supported");
    let _ = raw(pg.addr(), &[5, 0xff, 1, 2, 3]);
    ok();
    // Slow headers: closed after client_header (1s), not held forever.
    let t = Instant::now();
    let mut s = TcpStream::connect(pg.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET http://x/ HTTP/1.1\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "slow client held {:?}",
        t.elapsed()
    );
    // Silent client on the mixed port.
    let t = Instant::now();
    let mut s = TcpStream::connect(pg.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.read_to_end(&mut out);
    assert!(t.elapsed() < Duration::from_secs(5));
    ok();
}

#[test]
fn zero_config_uses_environment_and_refuses_loops() {
    // tinyproxy looks the target name up: in a namespace whose resolv.conf
    // names its own loopback (nothing listens), so the lookup stays here.
    let ns = support::netns::Netns::new();
    let _inside = ns.enter();
    let echo = EchoServer::start();
    let tiny = Tinyproxy::start(TinyOpts {
        connect_ports: None,
        logged: true,
    });
    let listen = free_addr();
    let mut pg = Proxyguard::start_with_args(
        &["serve", "--listen", &listen.to_string()],
        &[("HTTP_PROXY", &tiny.url()), ("NO_PROXY", "")],
    );
    pg.wait_listening(listen);
    let r = curl(&[
        "-x",
        &format!("http://{listen}"),
        &format!("http://echo.invalid-for-test:{}/", echo.port()),
    ]);
    // tinyproxy receives it (and fails DNS for the .invalid name itself).
    assert!(
        r.status == 500 || r.status == 502 || r.status == 404,
        "{r:?}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || tiny.requests() >= 1),
        "{}",
        tiny.log()
    );
    drop(pg);
    // HTTP_PROXY pointing at our own listener: refused at start.
    let own = free_addr();
    let out = proxyguard_run(
        &["serve", "--listen", &own.to_string()],
        &[("HTTP_PROXY", &format!("http://{own}"))],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("loop"), "{out:?}");
}

#[test]
fn check_accepts_example_and_reports_bad_config_location() {
    let ex = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/proxyguard.toml");
    let out = proxyguard_run(&["check", "--config", ex], &[], Duration::from_secs(10));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("configuration OK"));
    assert!(
        !out.stdout.contains("s3cret"),
        "secret printed: {}",
        out.stdout
    );
    let dir = temp_dir("badcfg", false);
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "[[listen]]\naddr = \"127.0.0.1:3128\"\n\n[timeouts]\nconnect = 3\n",
    )
    .unwrap();
    let out = proxyguard_run(
        &["check", "--config", p.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("bad.toml:5:"), "{out:?}");
    assert!(out.stderr.contains("timeouts.connect"), "{out:?}");
    // Non-loopback listener without auth refuses to start.
    std::fs::write(&p, "[[listen]]\naddr = \"0.0.0.0:0\"\n").unwrap();
    let out = proxyguard_run(
        &["serve", "--config", p.to_str().unwrap()],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("[auth]"), "{out:?}");
}

#[test]
fn graceful_shutdown_lets_live_tunnel_finish() {
    let echo = EchoServer::start();
    let mut pg = start("http", &[], "[timeouts]\nshutdown_grace = \"5s\"\n");
    // A slow response through a CONNECT tunnel, then SIGTERM mid-flight.
    let addr = pg.addr();
    let url = format!("{}/delay/1000", echo.url());
    let h = std::thread::spawn(move || curl(&["-x", &format!("http://{addr}"), "-p", &url]));
    assert!(wait_until(Duration::from_secs(5), || echo.requests() >= 1));
    pg.child.signal(15);
    let r = h.join().unwrap();
    assert_eq!(r.status, 200, "tunnel cut by shutdown: {r:?}");
    assert!(
        pg.child.wait_exit(Duration::from_secs(8)).is_some(),
        "did not exit"
    );
    // And no longer accepting.
    assert!(TcpStream::connect(addr).is_err());
}
