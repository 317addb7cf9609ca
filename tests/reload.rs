//! Reload applies everything and reuses nothing it should not: a changed
//! `weight` moves traffic, a changed `[breaker]` applies to the next
//! failures, an unchanged member keeps its health and counters, and a
//! member whose URL changed never gets a request on a socket opened to the
//! old proxy. Real tinyproxy, squid and nginx; a pass-through relay counts
//! the connections made to each address.

mod support;

use std::net::SocketAddr;

use support::faults::{Fault, FaultRelay};
use support::*;

struct Gw {
    pg: Proxyguard,
    listen: SocketAddr,
    admin: SocketAddr,
}

impl Gw {
    fn start(body: &str) -> Gw {
        let (listen, admin) = (free_addr(), free_addr());
        let pg = Proxyguard::start(&config(listen, admin, body));
        Gw { pg, listen, admin }
    }

    /// Rewrites the config with `body` and `POST /reload`s it.
    fn reload(&self, body: &str) {
        let path = self.pg.config_path().expect("config file");
        std::fs::write(path, config(self.listen, self.admin, body)).unwrap();
        let r = admin_reload(self.admin, "t0ken-t0ken-t0ken");
        assert_eq!(r.status, 200, "reload: {r:?}\n{}", self.pg.logs());
    }

    fn get(&self, url: &str) -> CurlOut {
        curl(&["-s", "-x", &format!("http://{}", self.listen), url])
    }

    fn upstream(&self, name: &str) -> serde_json::Value {
        admin_upstream(self.admin, name)
    }
}

/// Health checks off: every connection to an upstream is a request's.
fn config(listen: SocketAddr, admin: SocketAddr, body: &str) -> String {
    format!(
        "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\nprotocol = \"http\"\n\n\
         [admin]\naddr = \"{admin}\"\ntoken = \"t0ken-t0ken-t0ken\"\n\n\
         [health]\nenabled = false\n\n{body}"
    )
}

/// Requests tinyproxy logged whose request line contains `needle`.
fn seen(t: &Tinyproxy, needle: &str) -> usize {
    t.log()
        .lines()
        .filter(|l| l.contains("Request (file descriptor") && l.contains(needle))
        .count()
}

fn weighted(w0: u32, w1: u32, t: &[Tinyproxy]) -> String {
    format!(
        "[pool]\nstrategy = \"weighted\"\n\n\
         [[upstream]]\nname = \"a\"\nurl = \"{}\"\nweight = {w0}\n\n\
         [[upstream]]\nname = \"b\"\nurl = \"{}\"\nweight = {w1}\n",
        t[0].url(),
        t[1].url()
    )
}

#[test]
fn a_changed_weight_moves_traffic_and_an_unchanged_member_keeps_its_counters() {
    let nginx = Nginx::start();
    let t = Tinyproxy::many(2);
    let gw = Gw::start(&weighted(1, 1, &t));
    let url = |tag: &str| format!("{}/small?{tag}", nginx.url());
    for _ in 0..40 {
        assert_eq!(gw.get(&url("before")).status, 200);
    }
    // The pick is random by weight: 1:1 splits 40 requests about evenly
    // (fewer than 5 on one side: odds below 1e-7).
    let before = (seen(&t[0], "before"), seen(&t[1], "before"));
    assert!(
        before.0 >= 5 && before.1 >= 5,
        "weight 1:1 not followed: {before:?}"
    );
    let b_ok = gw.upstream("b")["successes"].as_u64().unwrap();
    assert_eq!(b_ok as usize, before.1, "b's successes");

    // Only "a" changes (its weight): "b" keeps its member and counters.
    gw.reload(&weighted(1000, 1, &t));
    assert_eq!(
        gw.upstream("b")["successes"].as_u64(),
        Some(b_ok),
        "an unchanged member keeps its counters across a reload"
    );
    assert_eq!(
        gw.upstream("a")["successes"].as_u64(),
        Some(0),
        "a changed member starts afresh"
    );
    for _ in 0..40 {
        assert_eq!(gw.get(&url("after")).status, 200);
    }
    // 1000:1 sends all but ~0.1 % to "a".
    let after = (seen(&t[0], "after"), seen(&t[1], "after"));
    assert!(after.0 >= 36, "weight change not applied: {after:?}");
}

fn with_breaker(threshold: u32, dead: SocketAddr, t: &Tinyproxy) -> String {
    format!(
        "[breaker]\nfailure_threshold = {threshold}\nopen_for = \"60s\"\n\n\
         [[upstream]]\nname = \"dead\"\nurl = \"http://{dead}\"\npriority = 0\nmax_fails = 1000\n\n\
         [[upstream]]\nname = \"good\"\nurl = \"{}\"\npriority = 1\n",
        t.url()
    )
}

#[test]
fn a_changed_breaker_applies_to_the_next_failures() {
    let nginx = Nginx::start();
    let t = Tinyproxy::start(TinyOpts {
        connect_ports: None,
        logged: true,
    });
    let dead = free_addr(); // nothing listens: every connect is refused
    let gw = Gw::start(&with_breaker(1000, dead, &t));
    let url = format!("{}/small", nginx.url());
    for _ in 0..6 {
        assert_eq!(gw.get(&url).status, 200, "{}", gw.pg.logs());
    }
    let d = gw.upstream("dead");
    assert_eq!(
        d["breaker"], "closed",
        "threshold 1000 after 6 failures: {d}"
    );
    assert_eq!(d["failures"].as_u64(), Some(6), "{d}");

    gw.reload(&with_breaker(3, dead, &t));
    for _ in 0..6 {
        assert_eq!(gw.get(&url).status, 200, "{}", gw.pg.logs());
    }
    let d = gw.upstream("dead");
    assert_eq!(d["breaker"], "open", "threshold 3 not applied: {d}");
    assert_eq!(
        d["failures"].as_u64(),
        Some(3),
        "an open breaker admits no more attempts: {d}"
    );
}

fn one_upstream(url: &str) -> String {
    format!("[[upstream]]\nname = \"a\"\nurl = \"{url}\"\n")
}

#[test]
fn a_url_change_never_reuses_a_socket_to_the_old_proxy() {
    let nginx = Nginx::start();
    let squid = Squid::start(None);
    // Two addresses for the same squid, so connections to each are counted.
    let old = FaultRelay::start(squid.addr(), Fault::Pass);
    let new = FaultRelay::start(squid.addr(), Fault::Pass);
    let gw = Gw::start(&one_upstream(&old.url("http")));
    let url = format!("{}/small", nginx.url());
    for _ in 0..3 {
        assert_eq!(gw.get(&url).status, 200, "{}", gw.pg.logs());
    }
    // squid keeps connections alive: three requests, one connection. This
    // is what makes the check below able to fail.
    assert_eq!(old.accepted(), 1, "the upstream connection is pooled");

    gw.reload(&one_upstream(&new.url("http")));
    for _ in 0..3 {
        assert_eq!(gw.get(&url).status, 200, "{}", gw.pg.logs());
    }
    assert_eq!(old.accepted(), 1, "no new connection to the old address");
    assert_eq!(
        new.accepted(),
        1,
        "after the URL change the requests went to the new address, on a new (then pooled) connection"
    );
}
