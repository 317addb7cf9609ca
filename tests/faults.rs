//! The gray-failure matrix: the faults real proxies and targets show —
//! a half-dead proxy (accepts TCP, never answers), a dead target, a client's
//! broken body, a body stalled or cut mid-way, a flapping proxy, twenty
//! reloads under load — through real tinyproxy and nginx, with real clients
//! (curl, and `hey`, a Go net/http client). A fault relay in front of a real
//! peer shows the faults no peer shows on demand.
//!
//! The rule each cell checks: a client never sees a failure another healthy
//! upstream could have served; where none could, it gets a prompt, correctly
//! named error; and no client or dead target gets a healthy upstream ejected.
//! Each cell prints a `MATRIX|…` line; `scripts/chaos` collects them.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::faults::{Fault, FaultRelay};
use support::hey::*;
use support::*;

/// Cells measure latency: one at a time on these small machines.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

struct Gw {
    pg: Proxyguard,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Gw {
    /// Upstreams in failover order; `extra` is appended to the config.
    fn start(upstreams: &[String], extra: &str) -> Gw {
        let listen = free_addr();
        let admin = free_addr();
        Gw::start_at(listen, admin, upstreams, extra)
    }

    fn start_at(listen: SocketAddr, admin: SocketAddr, upstreams: &[String], extra: &str) -> Gw {
        let pg = Proxyguard::start(&config(listen, admin, upstreams, extra));
        Gw { pg, listen, admin }
    }

    fn proxy(&self) -> String {
        format!("http://{}", self.listen)
    }

    fn status(&self) -> serde_json::Value {
        admin_status(self.admin)
    }

    fn upstream(&self, name: &str) -> serde_json::Value {
        admin_upstream(self.admin, name)
    }

    /// `POST /reload` with the admin token.
    fn reload(&self) -> CurlOut {
        admin_reload(self.admin, "t0ken-t0ken-t0ken")
    }

    fn healthz(&self) -> u16 {
        curl(&["-s", &format!("http://{}/healthz", self.admin)]).status
    }
}

fn config(listen: SocketAddr, admin: SocketAddr, upstreams: &[String], extra: &str) -> String {
    let mut s = format!(
        "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\nprotocol = \"mixed\"\n\n\
         [admin]\naddr = \"{admin}\"\ntoken = \"t0ken-t0ken-t0ken\"\n\n\
         [health]\ninterval = \"500ms\"\ntimeout = \"500ms\"\n\n\
         [timeouts]\nresponse_head = \"3s\"\nbody_idle = \"1s\"\n\n"
    );
    for (i, u) in upstreams.iter().enumerate() {
        s.push_str(&format!(
            "[[upstream]]\nname = \"u{i}\"\nurl = \"{u}\"\npriority = {i}\n\n"
        ));
    }
    s.push_str(extra);
    s
}

/// Requests tinyproxy logged whose request line contains `needle`
/// (health probes are `OPTIONS *` and never match a URL).
fn seen(t: &Tinyproxy, needle: &str) -> usize {
    t.log()
        .lines()
        .filter(|l| l.contains("Request (file descriptor") && l.contains(needle))
        .count()
}

/// Sends raw bytes to the gateway and returns its answer (head and body).
fn raw(gw: &Gw, bytes: &[u8], then_close_write: bool) -> String {
    let mut s = TcpStream::connect(gw.listen).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(bytes).unwrap();
    if then_close_write {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|w| w == b"\r\n\r\n") && !then_close_write {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn half_dead_first_upstream_never_reaches_clients() {
    let _g = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(3);
    let dead = FaultRelay::start(t[0].addr(), Fault::Silent);
    let ups = [dead.url("http"), t[1].url(), t[2].url()];
    let gw = Gw::start(&ups, "");
    let small = format!("{}/small", nginx.url());
    // Straight away, before any health check could have judged it.
    let h = hey(&gw.proxy(), &small, 200, 5, &[]);
    matrix_cell("plain GET keep-alive", "half-dead", &h, "hedged past it");
    assert_all_ok(&h, 200, "plain keep-alive", || gw.pg.logs());
    let h = hey(&gw.proxy(), &small, 100, 5, &["-disable-keepalive"]);
    matrix_cell("plain GET new conn", "half-dead", &h, "");
    assert_all_ok(&h, 100, "plain new connections", || gw.pg.logs());
    let h = hey(
        &gw.proxy(),
        &format!("{}/small", nginx.https_url()),
        100,
        5,
        &[],
    );
    matrix_cell("CONNECT", "half-dead", &h, "raced past it");
    assert_all_ok(&h, 100, "CONNECT", || gw.pg.logs());
    // The application-level probe finds it down (a TCP probe would not).
    assert!(
        wait_until(Duration::from_secs(15), || gw.upstream("u0")["state"]
            != "healthy"),
        "half-dead upstream not found down: {}",
        gw.upstream("u0")
    );
    let echo = EchoServer::start();
    let h = hey(
        &gw.proxy(),
        &echo.url(),
        100,
        5,
        &["-m", "POST", "-d", "payload"],
    );
    matrix_cell(
        "plain POST body",
        "half-dead",
        &h,
        "after the check found it",
    );
    assert_all_ok(&h, 100, "POST", || gw.pg.logs());
    for _ in 0..5 {
        let r = curl(&["-s", "-m", "20", "-x", &gw.proxy(), &small]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    // Side by side: the same Go client pointed straight at the half-dead
    // proxy (what the app sees without proxyguard).
    let direct = hey(&dead.url("http"), &small, 10, 5, &["-t", "2"]);
    matrix_cell(
        "plain GET keep-alive",
        "half-dead, Go client straight to it",
        &direct,
        "side by side",
    );
    assert_eq!(direct.ok, 0, "{}", direct.raw);
    // The healthy ones were never blamed.
    for u in ["u1", "u2"] {
        assert_eq!(gw.upstream(u)["state"], "healthy", "{}", gw.status());
    }
}

#[test]
fn dead_target_ejects_nobody_and_gets_a_prompt_named_502() {
    let _g = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(2);
    let gw = Gw::start(&[t[0].url(), t[1].url()], "");
    let dead = free_port();
    let req = format!("CONNECT 127.0.0.1:{dead} HTTP/1.1\r\nHost: 127.0.0.1:{dead}\r\n\r\n");
    let mut worst = Duration::ZERO;
    for i in 0..20 {
        let t0 = Instant::now();
        let answer = raw(&gw, req.as_bytes(), false);
        worst = worst.max(t0.elapsed());
        assert!(answer.starts_with("HTTP/1.1 502"), "{i}: {answer}");
        let ps = answer
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("proxy-status:"))
            .unwrap_or_default()
            .to_string();
        assert!(
            ps.contains("error=destination_unavailable") && ps.contains("next-hop="),
            "{i}: {answer}"
        );
    }
    println!(
        "MATRIX|CONNECT fresh|dead target|20|20 (502, expected)|{:.1}|worst answer",
        worst.as_secs_f64() * 1000.0
    );
    // Two upstreams were asked once; the next 19 were answered from the
    // dead-target cache without bothering them.
    let line = format!("CONNECT 127.0.0.1:{dead} ");
    let asked = seen(&t[0], &line) + seen(&t[1], &line);
    assert!(
        asked <= 4,
        "upstreams asked {asked} times for one dead target"
    );
    for u in ["u0", "u1"] {
        let st = gw.upstream(u);
        assert_eq!(st["state"], "healthy", "{st}");
        assert_eq!(st["failures"], 0, "{st}");
    }
    assert_eq!(gw.healthz(), 200);
    // Plain HTTP to the dead target: tinyproxy's own 500 passes through.
    let r = curl(&[
        "-s",
        "-x",
        &gw.proxy(),
        &format!("http://127.0.0.1:{dead}/"),
    ]);
    assert!(r.status >= 500, "{r:?}");
    // Live origins are served as before.
    for _ in 0..5 {
        let r = curl(&[
            "-s",
            "-p",
            "-k",
            "-x",
            &gw.proxy(),
            &format!("{}/small", nginx.https_url()),
        ]);
        assert_eq!(r.status, 200, "{r:?}");
    }
    for u in ["u0", "u1"] {
        assert_eq!(gw.upstream(u)["state"], "healthy");
    }
}

#[test]
fn client_broken_body_is_a_400_and_ejects_nobody() {
    let _g = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(1);
    let gw = Gw::start(&[t[0].url()], "[pool]\nfallback = \"direct\"\n");
    let url = format!("{}/small", nginx.url());
    let host = nginx.addr();
    for i in 0..3 {
        let bad_chunks = format!(
            "POST {url} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        );
        let answer = raw(&gw, bad_chunks.as_bytes(), false);
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "bad chunk {i}: {answer}"
        );
        let abandoned =
            format!("POST {url} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100000\r\n\r\nabc");
        // The client gives up half way: whatever it gets, nobody is blamed.
        let _ = raw(&gw, abandoned.as_bytes(), true);
    }
    assert!(
        wait_until(Duration::from_secs(3), || gw
            .pg
            .logs()
            .contains("client_error")),
        "{}",
        gw.pg.logs()
    );
    let st = gw.upstream("u0");
    assert_eq!(st["state"], "healthy", "{st}");
    assert_eq!(st["failures"], 0, "{st}");
    assert_eq!(gw.healthz(), 200);
    // The next request still goes through the upstream, not around it.
    let get = format!("GET {url} ");
    let before = seen(&t[0], &get);
    let r = curl(&["-s", "-x", &gw.proxy(), &url]);
    assert_eq!(r.status, 200);
    assert!(
        wait_until(Duration::from_secs(3), || seen(&t[0], &get) > before),
        "went around the upstream"
    );
    assert!(!gw.pg.logs().contains("degraded"), "{}", gw.pg.logs());
    println!(
        "MATRIX|plain POST body|client broken body|6|0 blamed|-|400 client_error, upstream kept"
    );
}

#[test]
fn stalled_or_cut_body_reaches_the_client_truncated() {
    let _g = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(1);
    let relay = FaultRelay::start(t[0].addr(), Fault::StallAfterHead);
    let gw = Gw::start(&[relay.url("http")], "");
    let url = format!("{}/big", nginx.url());
    let t0 = Instant::now();
    let r = curl(&["-s", "-m", "20", "-x", &gw.proxy(), &url]);
    let took = t0.elapsed();
    // curl 18: "transfer closed with bytes remaining" — never a clean 0.
    assert_eq!(
        r.exit_code, 18,
        "stalled body must fail, not hang or look complete: {r:?}"
    );
    println!("MATRIX|plain GET keep-alive|stall after head|1|1 (truncated, expected)|{:.1}|cut after body_idle", took.as_secs_f64() * 1000.0);
    relay.set(Fault::CutAfter(4096));
    let r = curl(&["-s", "-m", "20", "-x", &gw.proxy(), &url]);
    assert_eq!(r.exit_code, 18, "cut body must fail: {r:?}");
    assert!(r.body_len < nginx.big_bytes());
    println!("MATRIX|plain GET keep-alive|cut mid-body|1|1 (truncated, expected)|-|");
}

#[test]
fn flapping_upstream_costs_no_request() {
    let _g = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(2);
    let flap = FaultRelay::start(t[0].addr(), Fault::Flap(Duration::from_millis(700)));
    let gw = Gw::start(&[flap.url("http"), t[1].url()], "");
    let small = format!("{}/small", nginx.url());
    let h = hey(&gw.proxy(), &small, 600, 4, &["-disable-keepalive"]);
    matrix_cell("plain GET new conn", "flapping", &h, "");
    assert_all_ok(&h, 600, "flapping plain", || gw.pg.logs());
    let h = hey(
        &gw.proxy(),
        &format!("{}/small", nginx.https_url()),
        300,
        4,
        &[],
    );
    matrix_cell("CONNECT", "flapping", &h, "");
    assert_all_ok(&h, 300, "flapping CONNECT", || gw.pg.logs());
    assert!(flap.accepted() > 0);
}

#[test]
fn twenty_reloads_under_load_lose_nothing_and_apply_priorities() {
    let _g = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(2);
    let (listen, admin) = (free_addr(), free_addr());
    let order = |first: usize| {
        let ups = if first == 0 {
            [t[0].url(), t[1].url()]
        } else {
            [t[1].url(), t[0].url()]
        };
        config(listen, admin, &ups, "")
    };
    let gw = Gw::start_at(listen, admin, &[t[0].url(), t[1].url()], "");
    let path = gw.pg.config_path().unwrap().to_path_buf();
    let (p, u) = (gw.proxy(), format!("{}/small", nginx.url()));
    let load = std::thread::spawn(move || hey(&p, &u, 4000, 8, &[]));
    for i in 0..20 {
        std::fs::write(&path, order((i + 1) % 2)).unwrap();
        let r = gw.reload();
        assert_eq!(r.status, 200, "reload {i}: {r:?}");
        std::thread::sleep(Duration::from_millis(60));
    }
    let h = load.join().unwrap();
    matrix_cell("plain GET keep-alive", "reload x20", &h, "");
    assert_all_ok(&h, 4000, "reloads under load", || gw.pg.logs());
    // The last config put t[0] first again (20 is even): traffic follows a
    // priority swap.
    std::fs::write(&path, order(1)).unwrap();
    assert_eq!(gw.reload().status, 200);
    let probe = format!("{}/small?after-swap", nginx.url());
    assert!(wait_until(Duration::from_secs(5), || {
        curl(&["-s", "-x", &gw.proxy(), &probe]);
        seen(&t[1], "after-swap") > 0
    }));
    let before = (seen(&t[0], "after-swap"), seen(&t[1], "after-swap"));
    for _ in 0..10 {
        assert_eq!(curl(&["-s", "-x", &gw.proxy(), &probe]).status, 200);
    }
    let after = (seen(&t[0], "after-swap"), seen(&t[1], "after-swap"));
    assert!(
        after.1 - before.1 >= 10 && after.0 == before.0,
        "priority swap not applied: {before:?} -> {after:?}"
    );
}

/// A reverse route over two echo backends (`/status/502` answers 502).
fn reverse_route(listen: SocketAddr, a: &EchoServer, b: &EchoServer, extra: &str) -> Proxyguard {
    let cfg = format!(
        "[[listen]]\naddr = \"{}\"\n\n[health]\nenabled = false\n\n[[route]]\nlisten = \"{listen}\"\nretry_body_limit = 1024\n{extra}\n\
         [[route.backend]]\nurl = \"{}\"\n\n[[route.backend]]\nurl = \"{}\"\n",
        free_addr(),
        a.url(),
        b.url()
    );
    let mut pg = Proxyguard::start(&cfg);
    pg.wait_listening(listen);
    pg
}

#[test]
fn reverse_never_replays_a_body_it_no_longer_holds() {
    let _g = serial();
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let listen = free_addr();
    let _pg = reverse_route(listen, &a, &b, "");
    let url = format!("http://{listen}/status/502");
    // A streamed (chunked, unknown length) PUT: sent once, the 502 answered.
    let big = "x".repeat(64 * 1024);
    let r = curl(&[
        "-s",
        "-X",
        "PUT",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &big,
        &url,
    ]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(
        a.requests() + b.requests(),
        1,
        "a streamed PUT must not be replayed (empty) on the other backend"
    );
    // A small PUT is held in full: retried on the other backend with its body.
    let r = curl(&["-s", "-X", "PUT", "--data-binary", "small-body", &url]);
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(a.requests() + b.requests(), 3, "held PUT retried once");
    for s in [&a, &b] {
        let last = s.last_request().unwrap_or_default();
        assert!(
            last.contains("body-length: 10") || last.contains("body-length: 65536"),
            "a backend saw a replay without the body: {last}"
        );
    }
    println!("MATRIX|reverse chunked PUT|backend 502|1|1 (502 passed on)|-|not replayed");
}

#[test]
fn reverse_fallback_cache_never_shares_a_private_answer() {
    let _g = serial();
    let (a, b) = (EchoServer::start(), EchoServer::start());
    let listen = free_addr();
    let pg = reverse_route(
        listen,
        &a,
        &b,
        "[route.fallback]\ncache_get = \"1m\"\nstatus = 503\nbody = \"down\"\n",
    );
    let url = format!("http://{listen}/alice");
    // Alice's authorised answer, then an anonymous one for the same URL.
    let r = curl(&["-s", "-H", "Authorization: Bearer alice-secret", &url]);
    assert_eq!(r.status, 200);
    assert!(r.body.contains("alice-secret"));
    drop((a, b));
    assert!(wait_until(Duration::from_secs(10), || {
        curl(&["-s", &format!("http://{listen}/other")]).status == 503
    }));
    let r = curl(&["-s", &url]);
    assert!(
        !r.body.contains("alice-secret"),
        "the fallback cache served Alice's answer to an anonymous client: {r:?}\n{}",
        pg.logs()
    );
    assert_eq!(r.status, 503, "{r:?}");
}

#[test]
fn one_down_event_per_outage_and_no_false_recovery() {
    let _g = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(2);
    let relay = FaultRelay::start(t[0].addr(), Fault::Reset);
    let gw = Gw::start(
        &[relay.url("http"), t[1].url()],
        "[pool]\nbase_ejection = \"1s\"\n",
    );
    let events = |kind: &str| {
        gw.status()["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind && e["upstream"] == "u0")
            .count()
    };
    let h = hey(&gw.proxy(), &format!("{}/small", nginx.url()), 100, 4, &[]);
    assert_all_ok(&h, 100, "failover past a resetting upstream", || {
        gw.pg.logs()
    });
    // Ejected by traffic and failing its checks: one outage, one event.
    assert!(wait_until(Duration::from_secs(10), || events(
        "upstream_down"
    ) == 1));
    // The 1 s ejection expires while the checks still fail: no recovery.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(events("upstream_up"), 0, "false recovery: {}", gw.status());
    assert_eq!(events("upstream_down"), 1, "{}", gw.status());
    assert_ne!(gw.upstream("u0")["state"], "healthy");
    // It really comes back: one upstream_up.
    relay.set(Fault::Pass);
    assert!(
        wait_until(Duration::from_secs(10), || events("upstream_up") == 1),
        "{}",
        gw.status()
    );
    assert_eq!(events("upstream_down"), 1);
}

/// The rest of the matrix's columns on the first upstream — accept+close,
/// +300 ms latency, a slow drip — and the SOCKS5 row (a half-dead SOCKS5
/// upstream first): a healthy second upstream serves everything the first
/// cannot, and a slow-but-working path still delivers complete answers.
#[test]
fn accept_close_latency_drip_and_half_dead_socks_cost_no_request() {
    let _g = serial();
    let nginx = Nginx::start();
    let small = format!("{}/small", nginx.url());
    let tls_small = format!("{}/small", nginx.https_url());
    let t = Tinyproxy::many(2);
    for (fault, name) in [
        (Fault::AcceptClose, "accept+close"),
        (Fault::Latency(Duration::from_millis(300)), "+300 ms"),
        (Fault::Drip(1024), "slow drip 1 KB/s"),
    ] {
        let first = FaultRelay::start(t[0].addr(), fault);
        let gw = Gw::start(&[first.url("http"), t[1].url()], "");
        let h = hey(&gw.proxy(), &small, 100, 5, &["-disable-keepalive"]);
        matrix_cell("plain GET new conn", name, &h, "");
        assert_all_ok(&h, 100, name, || gw.pg.logs());
        let h = hey(&gw.proxy(), &tls_small, 100, 5, &[]);
        matrix_cell("CONNECT (hey, https)", name, &h, "");
        assert_all_ok(&h, 100, name, || gw.pg.logs());
        // Whatever the first upstream did, nobody else was blamed.
        assert_eq!(gw.upstream("u1")["state"], "healthy", "{}", gw.status());
    }
    let m = [Microsocks::start(None), Microsocks::start(None)];
    let dead = FaultRelay::start(m[0].addr(), Fault::Silent);
    let gw = Gw::start(
        &[dead.url("socks5"), format!("socks5://{}", m[1].addr())],
        "",
    );
    let h = hey(&gw.proxy(), &small, 100, 5, &[]);
    matrix_cell("plain GET via SOCKS5 upstreams", "half-dead", &h, "");
    assert_all_ok(&h, 100, "SOCKS5 plain", || gw.pg.logs());
    let h = hey(&gw.proxy(), &tls_small, 100, 5, &[]);
    matrix_cell(
        "CONNECT via SOCKS5 upstreams",
        "half-dead",
        &h,
        "raced past it",
    );
    assert_all_ok(&h, 100, "SOCKS5 CONNECT", || gw.pg.logs());
    // A SOCKS5 client of the gateway itself.
    for _ in 0..10 {
        let r = curl(&[
            "-s",
            "-m",
            "20",
            "--socks5-hostname",
            &gw.listen.to_string(),
            &small,
        ]);
        assert_eq!(r.status, 200, "{r:?}\n{}", gw.pg.logs());
    }
    assert!(
        wait_until(Duration::from_secs(15), || gw.upstream("u0")["state"]
            != "healthy"),
        "half-dead SOCKS5 upstream not found down: {}",
        gw.upstream("u0")
    );
}
