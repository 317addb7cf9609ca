//! The gateway applies what `doctor --hold` learns about idle cuts: pooled
//! connections to an upstream are retired before the path cuts them
//! (`[pool] upstream_idle`), a pooled connection found cut on reuse
//! shortens that upstream's idle lifetime (learnt, logged once), and
//! `[timeouts] tcp_keepalive` puts SO_KEEPALIVE on client, upstream and
//! tunnel sockets. Real Go net/http clients, squid, tinyproxy and nginx; a
//! fault relay plays the SLB/NAT that forgets idle connections.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use support::doctor_peers::TinyproxyWith;
use support::faults::{Fault, FaultRelay};
use support::*;

/// The gateway, its listener and its admin address.
fn gateway(upstream: &str, extra: &str) -> (Proxyguard, SocketAddr, SocketAddr) {
    let listen = free_addr();
    let admin = free_addr();
    let cfg = format!(
        "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\nprotocol = \"mixed\"\n\n\
         [admin]\naddr = \"{admin}\"\n\n[[upstream]]\nname = \"u0\"\nurl = \"{upstream}\"\n\n{extra}"
    );
    (Proxyguard::start(&cfg), listen, admin)
}

/// Runs each client at once (each is a separate Go process); results in order.
fn run_all(clients: Vec<GoOpts>) -> Vec<GoResult> {
    let handles: Vec<_> = clients
        .into_iter()
        .map(|o| std::thread::spawn(move || GoClient::run(&o)))
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

fn every_4s(url: &str, proxy: &str) -> GoOpts {
    GoOpts::new(url)
        .n(4)
        .interval(Duration::from_secs(4))
        // Only a forgotten connection takes this long: a hang guard.
        .timeout(Duration::from_secs(6))
        .proxy_all(proxy)
}

fn row(name: &str, r: &GoResult) {
    println!(
        "IDLE|{name}|ok {}|failed {}|errors {:?}",
        r.ok, r.failed, r.errors
    );
}

/// A Go client making a request every 4 s through a path that silently
/// forgets connections idle for 3 s (an SLB / NAT gateway) in front of
/// squid. Straight through that path, every reuse of a forgotten connection
/// times out; through proxyguard with `upstream_idle` below the cut, none
/// does, and proxyguard never even writes into a forgotten connection.
#[test]
fn go_every_4s_through_a_silent_3s_cut_fails_direct_and_never_via_proxyguard() {
    let origin = EchoServer::start();
    let squid = Squid::start(None);
    let cut = Fault::IdleCut {
        after: Duration::from_secs(3),
        reset: false,
    };
    let path_direct = FaultRelay::start(squid.addr(), cut);
    let path_pg = FaultRelay::start(squid.addr(), cut);
    let (pg, listen, _) = gateway(
        &path_pg.url("http"),
        "[pool]\nupstream_idle = \"2s\"\nhedge_after = \"off\"\n\n[timeouts]\nresponse_head = \"20s\"\n",
    );
    let url = format!("{}/every-4s", origin.url());
    let r = run_all(vec![
        every_4s(&url, &path_direct.url("http")),
        every_4s(&url, &format!("http://{listen}")),
    ]);
    row("silent 3s cut, Go direct", &r[0]);
    row("silent 3s cut, Go via proxyguard", &r[1]);
    assert!(
        r[0].failed >= 1 && path_direct.cuts() >= 1,
        "the direct path must show the cut, else this test proves nothing: {:?}",
        r[0]
    );
    assert_eq!((r[1].ok, r[1].failed), (4, 0), "{:?}\n{}", r[1], pg.logs());
    assert_eq!(
        path_pg.cuts(),
        0,
        "proxyguard reused a forgotten connection"
    );
}

/// The only upstream, behind a path that silently forgets connections idle
/// for 1 s, with `upstream_idle` well above the cut (nobody measured it):
/// every reuse after a pause writes into a forgotten connection. With no
/// second upstream to hedge on, the GET is hedged on a new connection to
/// the same upstream after `hedge_after`, instead of waiting out
/// `response_head` (30 s, far past the client's 6 s), and the cut is learnt
/// as from a reset on reuse.
#[test]
fn a_silently_forgotten_connection_to_the_only_upstream_is_hedged_on_a_new_one() {
    let origin = EchoServer::start();
    let squid = Squid::start(None);
    let path = FaultRelay::start(
        squid.addr(),
        Fault::IdleCut {
            after: Duration::from_secs(1),
            reset: false,
        },
    );
    let (pg, listen, admin) = gateway(
        &path.url("http"),
        "[pool]\nupstream_idle = \"60s\"\nhedge_after = \"200ms\"\n",
    );
    let r = GoClient::run(
        &GoOpts::new(&format!("{}/forgotten", origin.url()))
            .n(3)
            .interval(Duration::from_secs(2))
            // Only a request left waiting for `response_head` takes this long.
            .timeout(Duration::from_secs(6))
            .proxy_all(&format!("http://{listen}")),
    );
    row("silent 1s cut, only upstream, Go via proxyguard", &r);
    assert!(
        path.cuts() >= 1,
        "no request met a forgotten connection, so this test proves nothing\n{}",
        pg.logs()
    );
    assert_eq!((r.ok, r.failed), (3, 0), "{r:?}\n{}", pg.logs());
    let metrics = curl(&["-s", &format!("http://{admin}/metrics")]).body;
    let won = metrics
        .lines()
        .find_map(|l| l.strip_prefix("proxyguard_hedges_won_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(
        won.is_some_and(|n| n >= path.cuts() as f64),
        "every forgotten connection must be saved by a hedge: won {won:?}, cuts {}",
        path.cuts()
    );
    // The silent reuse taught the gateway the cut: later idle connections
    // are retired before it, so only the first reuse met it.
    assert_eq!(path.cuts(), 1, "{}", pg.logs());
    assert!(
        pg.logs().contains("was cut on the path"),
        "the cut was not learnt:\n{}",
        pg.logs()
    );
}

/// A path that forgets idle connections and resets the next bytes (what
/// most SLBs and NATs do) behind an upstream with the default
/// `upstream_idle` (10 s): the first reuse after 3 s of idleness meets the
/// reset, the request is retried on a new connection (the client sees
/// nothing), and proxyguard learns the cut: later idle connections are
/// retired, so no other request meets it. Logged once.
#[test]
fn a_connection_cut_on_reuse_shortens_the_upstream_idle_lifetime_once() {
    let origin = EchoServer::start();
    let squid = Squid::start(None);
    let path = FaultRelay::start(
        squid.addr(),
        Fault::IdleCut {
            after: Duration::from_secs(2),
            reset: true,
        },
    );
    let (pg, listen, admin) = gateway(&path.url("http"), "[pool]\nhedge_after = \"off\"\n");
    let r = GoClient::run(
        &GoOpts::new(&format!("{}/learn", origin.url()))
            .n(4)
            .interval(Duration::from_secs(3))
            .timeout(Duration::from_secs(10))
            .proxy_all(&format!("http://{listen}")),
    );
    row("reset 2s cut, Go via proxyguard (learning)", &r);
    assert_eq!((r.ok, r.failed), (4, 0), "{r:?}\n{}", pg.logs());
    assert_eq!(
        path.cuts(),
        1,
        "only the first reuse may meet the cut\n{}",
        pg.logs()
    );
    let learnt = pg
        .logs()
        .lines()
        .filter(|l| l.contains("was cut on the path"))
        .count();
    assert_eq!(learnt, 1, "learnt and logged once:\n{}", pg.logs());
    let status: serde_json::Value =
        serde_json::from_str(&curl(&["-s", &format!("http://{admin}/status")]).body)
            .expect("status JSON");
    let limit = status["upstreams"][0]["idle_limit_ms"].as_u64();
    // Half the idle age of the connection found cut (≥ 2 s, the relay's cut).
    assert!(
        limit.is_some_and(|ms| (1_000..=5_000).contains(&ms)),
        "idle_limit_ms: {}",
        status["upstreams"][0]
    );
}

/// The issue's own scenario: tinyproxy with `Timeout 3` (it closes idle
/// connections and tunnels after 3 s), a Go client every 4 s, HTTP and
/// HTTPS targets, straight to tinyproxy and through proxyguard side by side.
#[test]
fn go_every_4s_through_tinyproxy_timeout_3_side_by_side() {
    let nginx = Nginx::start();
    let tiny = TinyproxyWith::start("Timeout 3");
    let tiny_url = format!("http://{}", tiny.addr());
    let (pg, listen, _) = gateway(&tiny_url, "");
    let via = format!("http://{listen}");
    let http = format!("http://127.0.0.1:{}/small", nginx.port());
    let https = format!("https://127.0.0.1:{}/small", nginx.https_port());
    let ca = nginx.ca().ca_path();
    let r = run_all(vec![
        every_4s(&http, &tiny_url),
        every_4s(&http, &via),
        every_4s(&https, &tiny_url).cafile(&ca),
        every_4s(&https, &via).cafile(&ca),
    ]);
    row("tinyproxy Timeout 3, http, Go direct", &r[0]);
    row("tinyproxy Timeout 3, http, Go via proxyguard", &r[1]);
    row("tinyproxy Timeout 3, https, Go direct", &r[2]);
    row("tinyproxy Timeout 3, https, Go via proxyguard", &r[3]);
    for via in [&r[1], &r[3]] {
        assert_eq!((via.ok, via.failed), (4, 0), "{via:?}\n{}", pg.logs());
    }
}

/// `ss -tno` lines for established TCP sockets matching `filter`.
fn ss(filter: &str) -> String {
    let mut cmd = std::process::Command::new("ss");
    cmd.args(["-tnoH", "state", "established", filter]);
    let out = run_cmd(cmd, Duration::from_secs(10));
    assert_eq!(out.code, 0, "ss failed: {}", out.stderr);
    out.stdout
}

/// SO_KEEPALIVE with the configured idle time on the client's socket and
/// on the upstream socket of a CONNECT tunnel, as the kernel reports them.
#[test]
fn tcp_keepalive_is_set_on_client_and_upstream_sockets() {
    let origin = EchoServer::start();
    let tiny = TinyproxyWith::start("");
    let (pg, listen, _) = gateway(
        &format!("http://{}", tiny.addr()),
        "[timeouts]\ntcp_keepalive = { idle = \"97s\", interval = \"5s\", count = 4 }\n",
    );
    let mut s = TcpStream::connect(listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "CONNECT 127.0.0.1:{p} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n",
        p = origin.port()
    )
    .unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}\n{}",
        String::from_utf8_lossy(&buf[..n]),
        pg.logs()
    );
    // proxyguard's accepted socket (source port = the listener's) and its
    // socket to tinyproxy; the test's own socket has no keep-alive.
    let accepted = ss(&format!("( sport = :{} )", listen.port()));
    let upstream = ss(&format!("( dport = :{} )", tiny.addr().port()));
    let ours = ss(&format!("( dport = :{} )", listen.port()));
    for (what, lines) in [("client", &accepted), ("upstream", &upstream)] {
        assert!(
            lines.contains("timer:(keepalive,1m3") || lines.contains("timer:(keepalive,1min3"),
            "{what} socket without a 97 s keep-alive timer:\n{lines}"
        );
    }
    assert!(!ours.contains("keepalive"), "the test's own socket: {ours}");
    drop(s);
}
