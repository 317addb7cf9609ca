//! Issue 10's "proxy DNS fail" column for `serve`, in a network namespace
//! (`support::netns`) whose only resolver is a real dnsmasq on its loopback:
//! no lookup can leave the machine, and the test decides every answer.
//!
//! Pool `failover`: upstream `a` is named (`http://proxy-a.test:PORT`, a real
//! tinyproxy), `b` is a second tinyproxy by address. The name of `a` gets
//! NXDOMAIN, REFUSED (dnsmasq cannot SERVFAIL on demand; REFUSED is the
//! other "the resolver will not answer" rcode), a dead resolver (killed:
//! queries refused; frozen: queries time out), or stops resolving while
//! traffic runs. Each time a Go net/http client (`hey`, plain and CONNECT to
//! nginx over TLS) sees 0 failures, and `a` is found down by its health check
//! with a reason naming DNS. With every upstream's name failing, the client
//! gets a prompt 502 `Proxy-Status: proxyguard; error=dns_error` naming the
//! proxy as next hop. A working proxy (squid, resolving through the same
//! dnsmasq) that cannot resolve the *target* gets nobody blamed.
//! Each cell prints a `MATRIX|…` line; `scripts/chaos` collects them.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::hey::*;
use support::netns::{Inside, Netns, NsDns};
use support::*;

/// Cells measure latency: one at a time on these small machines.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `[timeouts] connect` (DNS + TCP) in these gateways.
const CONNECT_MS: u64 = 1000;

/// Everything inside one namespace. Fields drop in order: processes first,
/// then the thread leaves the namespace, then it is deleted.
struct World {
    pg: Option<Proxyguard>,
    listen: SocketAddr,
    admin: SocketAddr,
    nginx: Nginx,
    a: Tinyproxy,
    b: Tinyproxy,
    dns: NsDns,
    _inside: Inside,
    _ns: Netns,
}

impl World {
    /// A namespace with `resolv_conf`, dnsmasq answering `hosts`, nginx and
    /// two logged tinyproxies; no gateway yet.
    fn new(resolv_conf: &str, hosts: &str) -> World {
        let ns = Netns::with(resolv_conf, support::netns::LOOPBACK_HOSTS);
        let inside = ns.enter();
        let dns = NsDns::start(hosts);
        let nginx = Nginx::start();
        let a = Tinyproxy::start(TinyOpts {
            connect_ports: None,
            logged: true,
        });
        let b = Tinyproxy::start(TinyOpts {
            connect_ports: None,
            logged: true,
        });
        World {
            pg: None,
            listen: free_addr(),
            admin: free_addr(),
            nginx,
            a,
            b,
            dns,
            _inside: inside,
            _ns: ns,
        }
    }

    /// The default: one quick try per lookup.
    fn quick(hosts: &str) -> World {
        World::new(
            "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            hosts,
        )
    }

    /// Starts the gateway with upstreams `(name, url)` in failover order.
    fn serve(&mut self, upstreams: &[(&str, String)]) {
        self.serve_checked(upstreams, "2s");
    }

    /// Like `serve`, with this `[health] timeout`.
    fn serve_checked(&mut self, upstreams: &[(&str, String)], check_timeout: &str) {
        let mut s = format!(
            "bypass_loopback = false\n\n[[listen]]\naddr = \"{}\"\nprotocol = \"mixed\"\n\n\
             [admin]\naddr = \"{}\"\n\n\
             [health]\ninterval = \"500ms\"\ntimeout = \"{check_timeout}\"\n\n\
             [timeouts]\nconnect = \"{CONNECT_MS}ms\"\nresponse_head = \"3s\"\n\n",
            self.listen, self.admin
        );
        for (i, (name, url)) in upstreams.iter().enumerate() {
            s += &format!("[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\npriority = {i}\n\n");
        }
        self.pg = Some(Proxyguard::start(&s));
    }

    /// `a` by name, `b` by address.
    fn serve_a_named(&mut self) {
        let a = format!("http://proxy-a.test:{}", self.a.port());
        let b = self.b.url();
        self.serve(&[("a", a), ("b", b)]);
    }

    fn proxy(&self) -> String {
        format!("http://{}", self.listen)
    }

    fn logs(&self) -> String {
        self.pg.as_ref().map(|p| p.logs()).unwrap_or_default()
    }

    fn upstream(&self, name: &str) -> serde_json::Value {
        admin_upstream(self.admin, name)
    }

    /// Waits until `name` is out of service and its last health check failed
    /// with a reason naming DNS and its host; returns that reason.
    fn wait_down_for_dns(&self, name: &str, host: &str) -> String {
        let mut last = serde_json::Value::Null;
        let ok = wait_until(Duration::from_secs(15), || {
            last = self.upstream(name);
            let detail = last["last_check"]["detail"].as_str().unwrap_or("");
            last["state"] != "healthy"
                && last["last_check"]["ok"] == false
                && detail.contains("DNS lookup of")
                && detail.contains(host)
        });
        assert!(
            ok,
            "{name} not found down for DNS: {last:#}\n{}",
            self.logs()
        );
        last["last_check"]["detail"].as_str().unwrap().to_string()
    }

    fn small(&self) -> String {
        format!("{}/small", self.nginx.url())
    }

    fn small_tls(&self) -> String {
        format!("{}/small", self.nginx.https_url())
    }
}

/// The Go client pointed straight at the proxy by name: one round of 4
/// requests. hey prints no latencies when all fail, so the round's wall time
/// (how long each request waited for the resolver) is reported instead.
fn go_straight(w: &World, fault: &str) {
    let direct = format!("http://proxy-a.test:{}", w.a.port());
    let t = Instant::now();
    let h = hey(&direct, &w.small(), 4, 4, &[]);
    let took = t.elapsed().as_secs_f64() * 1000.0;
    println!(
        "MATRIX|plain GET|{fault}, Go client straight to the proxy|4|{}|{took:.1}|wall time of one round of 4 concurrent requests",
        4 - h.ok
    );
    assert_eq!(h.ok, 0, "{}", h.raw);
}

/// 100 plain and 100 CONNECT requests, each on a new connection, through
/// the gateway while `fault` is on: every one is served.
fn all_served(w: &World, fault: &str) {
    let h = hey(&w.proxy(), &w.small(), 100, 4, &["-disable-keepalive"]);
    matrix_cell("plain GET new conn", fault, &h, "");
    assert_all_ok(&h, 100, "plain", || w.logs());
    let h = hey(&w.proxy(), &w.small_tls(), 100, 4, &["-disable-keepalive"]);
    matrix_cell("CONNECT (hey, https)", fault, &h, "");
    assert_all_ok(&h, 100, "CONNECT", || w.logs());
}

/// Plain and CONNECT traffic through the gateway while `a`'s name fails:
/// all served by `b`; `a` found down by its check for DNS.
fn fails_over(w: &World, fault: &str) -> String {
    all_served(w, fault);
    let reason = w.wait_down_for_dns("a", "proxy-a.test");
    assert!(w.b.requests() >= 200, "b served: {}", w.b.requests());
    assert_eq!(w.upstream("b")["state"], "healthy");
    reason
}

#[test]
fn nxdomain_for_the_first_upstream_fails_over_with_no_failure() {
    let _g = serial();
    let mut w = World::quick("127.0.0.1 origin.test\n");
    w.serve_a_named();
    let reason = fails_over(&w, "proxy DNS: NXDOMAIN");
    assert!(reason.contains("proxy-a.test"), "{reason}");
    assert_eq!(w.a.requests(), 0, "{}", w.a.log());
}

#[test]
fn refused_by_the_resolver_fails_over_with_no_failure() {
    let _g = serial();
    let mut w = World::quick("127.0.0.1 origin.test\n");
    // Outside `.test` dnsmasq has no server to ask: it answers REFUSED.
    let a = format!("http://proxy-a.corp:{}", w.a.port());
    let b = w.b.url();
    w.serve(&[("a", a), ("b", b)]);
    all_served(&w, "proxy DNS: REFUSED");
    w.wait_down_for_dns("a", "proxy-a.corp");
    assert_eq!(w.a.requests(), 0, "{}", w.a.log());
}

#[test]
fn dead_resolver_fails_over_and_go_straight_to_the_proxy_fails() {
    let _g = serial();
    let mut w = World::quick("127.0.0.1 proxy-a.test\n");
    w.serve_a_named();
    w.dns.kill();
    fails_over(&w, "proxy DNS: resolver dead (refused)");
    // Side by side: the Go client pointed straight at the same proxy name.
    go_straight(&w, "proxy DNS: resolver dead (refused)");
}

/// The resolver receives queries and never answers: each lookup would wait
/// `timeout:2` of resolv.conf; the gateway stops waiting at `[timeouts]
/// connect` and the request is served by `b` meanwhile. The health check
/// gives up first (`[health] timeout` below `connect`, as with the defaults)
/// and still names the silent lookup.
#[test]
fn frozen_resolver_is_bounded_by_the_connect_deadline() {
    let _g = serial();
    let mut w = World::new(
        "nameserver 127.0.0.1\noptions timeout:2 attempts:1\n",
        "127.0.0.1 proxy-a.test\n",
    );
    let a = format!("http://proxy-a.test:{}", w.a.port());
    let b = w.b.url();
    w.serve_checked(&[("a", a), ("b", b)], "500ms");
    w.dns.freeze();
    all_served(&w, "proxy DNS: resolver frozen");
    let reason = w.wait_down_for_dns("a", "proxy-a.test");
    assert!(
        reason.contains("check timed out after 500ms: DNS lookup of proxy-a.test unanswered"),
        "{reason}"
    );
    go_straight(&w, "proxy DNS: resolver frozen");
}

/// The realistic outage: `a`'s record disappears while traffic runs, then
/// the resolver dies. Connections already open keep working; new ones go
/// to `b`; no client request fails.
#[test]
fn name_that_stops_resolving_mid_run_loses_no_request() {
    let _g = serial();
    let mut w = World::quick("127.0.0.1 proxy-a.test\n127.0.0.1 origin.test\n");
    w.serve_a_named();
    let stop = Arc::new(AtomicBool::new(false));
    let load = |url: String, stop: Arc<AtomicBool>, proxy: String| {
        std::thread::spawn(move || {
            let mut all = Vec::new();
            // Bounded: the main thread sets `stop` within a minute.
            for _ in 0..500 {
                all.push(hey(&proxy, &url, 100, 4, &["-disable-keepalive"]));
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            all
        })
    };
    let plain = load(w.small(), stop.clone(), w.proxy());
    let tls = load(w.small_tls(), stop.clone(), w.proxy());
    assert!(
        wait_until(Duration::from_secs(20), || w.a.requests() >= 20),
        "a never served\n{}",
        w.logs()
    );
    w.dns
        .set_hosts("127.0.0.1 origin.test\n", "proxy-a.test", false);
    w.wait_down_for_dns("a", "proxy-a.test");
    let b_then = w.b.requests();
    assert!(
        wait_until(Duration::from_secs(20), || w.b.requests() >= b_then + 40),
        "b took no traffic\n{}",
        w.logs()
    );
    w.dns.kill();
    let b_then = w.b.requests();
    assert!(
        wait_until(Duration::from_secs(20), || w.b.requests() >= b_then + 40),
        "b took no traffic after the resolver died\n{}",
        w.logs()
    );
    stop.store(true, Ordering::Relaxed);
    for (what, t) in [("plain", plain), ("CONNECT", tls)] {
        let runs = t.join().expect("load thread");
        let total = Hey {
            ok: runs.iter().map(|h| h.ok).sum(),
            other_status: runs.iter().map(|h| h.other_status).sum(),
            errors: runs.iter().map(|h| h.errors).sum(),
            p99_ms: runs.iter().map(|h| h.p99_ms).fold(0.0, f64::max),
            ..Default::default()
        };
        let bad: Vec<_> = runs.iter().filter(|h| h.ok != 100).collect();
        assert!(bad.is_empty(), "{what}: {bad:?}\n{}", w.logs());
        matrix_cell(
            if what == "plain" {
                "plain GET new conn"
            } else {
                "CONNECT (hey, https)"
            },
            "proxy DNS: record removed, then resolver killed, mid-run",
            &total,
            "p99 = worst batch",
        );
    }
}

/// Every upstream's name fails: a prompt 502 naming DNS and the next hop,
/// for plain HTTP and CONNECT, with NXDOMAIN, a frozen and a dead resolver
/// (a fresh gateway each: every answer is the first failure it sees).
#[test]
fn all_upstreams_failing_dns_get_a_prompt_named_502() {
    let _g = serial();
    for fault in ["NXDOMAIN", "resolver frozen", "resolver dead"] {
        let mut w = World::quick("127.0.0.1 origin.test\n");
        let a = format!("http://proxy-a.test:{}", w.a.port());
        let b = format!("http://proxy-b.test:{}", w.b.port());
        w.serve(&[("a", a), ("b", b)]);
        match fault {
            "resolver frozen" => w.dns.freeze(),
            "resolver dead" => w.dns.kill(),
            _ => {}
        }
        let fault = format!("proxy DNS: every upstream, {fault}");
        for (row, url) in [
            ("plain GET", w.small()),
            ("CONNECT (curl, https)", w.small_tls()),
        ] {
            let (status, ps, took) = ask(&w, &url);
            assert_eq!(status, 502, "{fault} {row}: {ps}\n{}", w.logs());
            assert!(
                ps.contains("proxyguard; error=dns_error")
                    && (ps.contains("next-hop=\"proxy-a.test\"")
                        || ps.contains("next-hop=\"proxy-b.test\"")),
                "{fault} {row}: {ps}"
            );
            println!(
                "MATRIX|{row}|{fault}|1|1 (502, expected)|{:.1}|{}",
                took.as_secs_f64() * 1000.0,
                ps.trim().replace('|', "/")
            );
        }
    }
}

/// One curl through the gateway: (status or CONNECT status, Proxy-Status, time).
fn ask(w: &World, url: &str) -> (u16, String, Duration) {
    let proxy = w.proxy();
    let t = Instant::now();
    let r = curl(&["-s", "-k", "-x", &proxy, url]);
    let took = t.elapsed();
    let ps = r
        .headers
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("proxy-status:"))
        .unwrap_or_default()
        .to_string();
    let status = if r.connect_status != 0 {
        r.connect_status
    } else {
        r.status
    };
    (status, ps, took)
}

/// A working proxy that cannot resolve the *target* (its own lookup gets
/// NXDOMAIN from the namespace's dnsmasq): a prompt, named answer, no
/// upstream blamed, and the next request to a live target is served.
/// Debian 12's squid 5.7 does not say `ERR_DNS_FAIL` here: it answers a
/// CONNECT with `500 ERR_CANNOT_FORWARD` and plain HTTP with `502
/// ERR_READ_ERROR`; tinyproxy says `500 Unable to connect` either way. So the
/// gateway can only report `destination_unavailable` (a squid that does say
/// `ERR_DNS_FAIL` gets `dns_error`: `TargetFault::from_reply`'s unit tests).
#[test]
fn proxy_whose_own_dns_fails_for_the_target_is_not_blamed() {
    let _g = serial();
    let mut w = World::quick("127.0.0.1 origin.test\n");
    let squid = Squid::start_logged(None);
    let b = w.b.url();
    w.serve(&[("a", squid.url()), ("b", b)]);
    let (status, ps, took) = ask(
        &w,
        &format!("https://nosuch.test:{}/small", w.nginx.https_port()),
    );
    assert_eq!(status, 502, "{ps}\n{}", w.logs());
    assert!(
        ps.contains("proxyguard; error=destination_unavailable")
            && ps.contains("ERR_CANNOT_FORWARD")
            && ps.contains("next-hop=\"a\""),
        "{ps}"
    );
    println!(
        "MATRIX|CONNECT fresh|target DNS fails at the proxies (squid, then tinyproxy)|1|1 (502, expected)|{:.1}|{}; no upstream blamed",
        took.as_secs_f64() * 1000.0,
        ps.trim().replace('|', "/")
    );
    // Plain HTTP: the proxies' own answers pass through (squid's 502, then
    // tinyproxy's 500 from the second opinion).
    let (status, _, _) = ask(&w, &format!("http://nosuch.test:{}/small", w.nginx.port()));
    assert!(status == 500 || status == 502, "{status}");
    assert!(
        w.b.requests() >= 2,
        "tinyproxy was asked for a second opinion: {}",
        w.b.log()
    );
    for u in ["a", "b"] {
        let st = w.upstream(u);
        assert_eq!(st["state"], "healthy", "{st}");
        assert_eq!(st["failures"], 0, "{st}");
    }
    // A live target through the same upstream.
    let before = squid.requests();
    for url in [
        format!("http://origin.test:{}/small", w.nginx.port()),
        format!("https://origin.test:{}/small", w.nginx.https_port()),
    ] {
        let r = curl(&["-s", "-k", "-x", &w.proxy(), &url]);
        assert_eq!((r.status, r.body_len), (200, SMALL_BYTES), "{r:?}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || squid.requests() >= before + 2),
        "{}",
        squid.access_log()
    );
}
