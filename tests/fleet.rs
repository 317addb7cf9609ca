//! Fleet health (`[fleet]`) with real parts on loopback: one real etcd,
//! three proxyguard gateways, three tinyproxy upstreams (the first behind a
//! fault relay that can blackhole it), curl as the client.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use support::etcd::Etcd;
use support::faults::{Fault, FaultRelay};
use support::*;

/// Hang guard for every condition polled below (never a speed assertion).
const WAIT: Duration = Duration::from_secs(40);

struct Gateway {
    pg: Proxyguard,
    admin: SocketAddr,
}

impl Gateway {
    /// A gateway with `ups` = (name, url, priority), checks off (only its
    /// traffic and the fleet inform it), quorum 1.
    /// `pool` adds `[pool]` keys.
    fn start(
        id: &str,
        etcd: &Etcd,
        prefix: &str,
        pool: &str,
        ups: &[(&str, String, i32)],
    ) -> Gateway {
        Gateway::start_ttl(id, etcd, prefix, pool, ups, "3s")
    }

    fn start_ttl(
        id: &str,
        etcd: &Etcd,
        prefix: &str,
        pool: &str,
        ups: &[(&str, String, i32)],
        ttl: &str,
    ) -> Gateway {
        let (listen, admin) = (free_addr(), free_addr());
        let mut cfg = format!(
            "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\n\n[admin]\naddr = \"{admin}\"\n\n\
             [health]\nenabled = false\n\n[pool]\nbase_ejection = \"1s\"\n{pool}\n\n"
        );
        for (name, url, prio) in ups {
            cfg.push_str(&format!(
                "[[upstream]]\nname = \"{name}\"\nurl = \"{url}\"\npriority = {prio}\nmax_fails = 1\n\n"
            ));
        }
        cfg.push_str(&format!(
            "[fleet]\netcd = [\"{}\"]\nprefix = \"{prefix}\"\nid = \"{id}\"\nquorum = 1\nttl = \"{ttl}\"\n",
            etcd.endpoint()
        ));
        Gateway {
            pg: Proxyguard::start(&cfg),
            admin,
        }
    }

    fn status(&self) -> Value {
        let r = curl(&["-s", &format!("http://{}/status", self.admin)]);
        serde_json::from_str(&r.body).unwrap_or(Value::Null)
    }

    fn upstream(&self, name: &str) -> Value {
        self.status()["upstreams"]
            .as_array()
            .and_then(|a| a.iter().find(|u| u["name"] == name).cloned())
            .unwrap_or(Value::Null)
    }

    fn events(&self, kind: &str) -> usize {
        self.status()["events"]
            .as_array()
            .map(|a| a.iter().filter(|e| e["kind"] == kind).count())
            .unwrap_or(0)
    }

    /// One request through a CONNECT tunnel of the gateway (a blackholed
    /// upstream never completes the CONNECT handshake, so racing blames it);
    /// asserts it succeeded.
    fn request(&self, origin: &EchoServer) {
        let r = curl(&[
            "-p",
            "-x",
            &self.pg.url(),
            &format!("{}/fleet", origin.url()),
        ]);
        assert_eq!(
            r.status,
            200,
            "a client of this gateway failed: {r:?}\n{}",
            self.pg.logs()
        );
    }

    fn wait_for(&self, what: &str, mut f: impl FnMut(&Gateway) -> bool) {
        let ok = wait_until(WAIT, || f(self));
        assert!(
            ok,
            "{what}: not within {WAIT:?}\nstatus: {}\n{}",
            self.status(),
            self.pg.logs()
        );
    }
}

fn fleet_ejected(u: &Value, by: &str) -> bool {
    u["state"] == "ejected"
        && u["ejection_reason"] == "fleet"
        && u["fleet_down"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["gateway"] == by))
}

fn healthy_without_reports(u: &Value) -> bool {
    u["state"] == "healthy" && u["fleet_down"].as_array().is_some_and(|a| a.is_empty())
}

fn sent_to(u: &Value) -> u64 {
    u["successes"].as_u64().unwrap_or(0) + u["failures"].as_u64().unwrap_or(0)
}

/// Drives gateway 1 (which prefers u1) until `done`, every request succeeding.
fn drive_until(g1: &Gateway, origin: &EchoServer, what: &str, mut done: impl FnMut() -> bool) {
    let ok = wait_until(WAIT, || {
        g1.request(origin);
        done()
    });
    assert!(
        ok,
        "{what}: not within {WAIT:?}\nstatus: {}\n{}",
        g1.status(),
        g1.pg.logs()
    );
}

#[test]
fn one_gateway_learns_a_dead_upstream_and_the_fleet_stops_using_it() {
    let mut etcd = Etcd::start();
    let t0 = std::time::Instant::now();
    let stage = |what: &str| eprintln!("fleet: {what} at {:?}", t0.elapsed());
    let origin = EchoServer::start();
    let tiny: Vec<Tinyproxy> = (0..3)
        .map(|_| Tinyproxy::start(TinyOpts::default()))
        .collect();
    let relay = FaultRelay::start(tiny[0].addr(), Fault::Pass);
    let prefix = "/pgtest/fleet/";
    let (u1, u2, u3) = (relay.url("http"), tiny[1].url(), tiny[2].url());
    // Gateway 1 prefers u1; gateways 2 and 3 keep it as their last resort,
    // so only gateway 1's traffic meets it.
    let g1 = Gateway::start(
        "g1",
        &etcd,
        prefix,
        "",
        &[
            ("u1", u1.clone(), 0),
            ("u2", u2.clone(), 1),
            ("u3", u3.clone(), 2),
        ],
    );
    let others: Vec<Gateway> = ["g2", "g3"]
        .iter()
        .map(|id| {
            // Racing only after 2 s: u1, their third choice, is never
            // raced in by a slow moment of u2 and u3 on a loaded machine.
            Gateway::start(
                id,
                &etcd,
                prefix,
                "race_after = \"2s\"",
                &[
                    ("u2", u2.clone(), 0),
                    ("u3", u3.clone(), 1),
                    ("u1", u1.clone(), 2),
                ],
            )
        })
        .collect();
    let all: Vec<&Gateway> = std::iter::once(&g1).chain(others.iter()).collect();
    for g in &all {
        g.wait_for("fleet_connected", |g| g.events("fleet_connected") >= 1);
        g.request(&origin);
    }

    stage("started");
    // u1 blackholed: gateway 1 meets it, ejects it and tells the fleet.
    relay.set(Fault::Silent);
    drive_until(&g1, &origin, "gateway 1 ejects u1", || {
        g1.upstream("u1")["state"] == "ejected"
    });
    assert_ne!(
        g1.upstream("u1")["ejection_reason"],
        "fleet",
        "its own verdict"
    );
    for g in &others {
        g.wait_for("u1 ejected with reason fleet", |g| {
            fleet_ejected(&g.upstream("u1"), "g1")
        });
        g.request(&origin);
        assert_eq!(
            sent_to(&g.upstream("u1")),
            0,
            "gateways 2 and 3 never sent to u1"
        );
    }
    stage("gateways 2 and 3 ejected u1 (fleet)");
    let keys = etcd.get_prefix(prefix);
    assert!(
        keys.contains("/pgtest/fleet/http:%2F%2F127.0.0.1:") && keys.contains("\"state\":\"down\""),
        "{keys}"
    );
    assert!(
        !keys.contains("\"gateway\":\"g2\"") && !keys.contains("\"gateway\":\"g3\""),
        "{keys}"
    );
    // The CLI table and the page show it too.
    let table = proxyguard_run(
        &["status", "--admin", &format!("http://{}", others[0].admin)],
        &[],
        Duration::from_secs(10),
    );
    assert!(table.stdout.contains("ejected:fleet"), "{}", table.stdout);
    let dom = support::browser::chromium_dom(&format!("http://{}/", others[0].admin));
    assert!(
        dom.contains("data-ejection-reason=\"fleet\"") && dom.contains("data-fleet-down=\"1\""),
        "{dom}"
    );

    stage("page and table checked");
    // u1 recovers: gateway 1's next success reports it up, the others readmit it.
    relay.set(Fault::Pass);
    drive_until(&g1, &origin, "the fleet readmits u1", || {
        others
            .iter()
            .all(|g| healthy_without_reports(&g.upstream("u1")))
    });
    assert!(etcd.get_prefix(prefix).contains("\"state\":\"up\""));

    stage("the fleet readmitted u1");
    // etcd lost: an event, pools unchanged, requests still served.
    let counts = |kind: &str| all.iter().map(|g| g.events(kind)).collect::<Vec<_>>();
    let (lost_before, back_before) = (counts("fleet_disconnected"), counts("fleet_connected"));
    etcd.kill();
    for (g, n) in all.iter().zip(&lost_before) {
        g.wait_for("fleet_disconnected", |g| {
            g.events("fleet_disconnected") > *n
        });
        g.wait_for("proxyguard_fleet_connected 0", |g| {
            let m = curl(&["-s", &format!("http://{}/metrics", g.admin)]).body;
            m.contains("proxyguard_fleet_connected 0")
        });
        // The same three members, no fleet reports left, still serving.
        let st = g.status();
        let ups = st["upstreams"].as_array().cloned().unwrap_or_default();
        let names: Vec<&str> = ups.iter().filter_map(|u| u["name"].as_str()).collect();
        assert_eq!(names.len(), 3, "{st}");
        assert!(
            ups.iter().all(|u| u["ejection_reason"] != "fleet"
                && u["fleet_down"].as_array().is_some_and(|a| a.is_empty())),
            "{st}"
        );
        g.request(&origin);
    }

    stage("etcd lost, everyone still serving");
    // etcd back: the watch and the publisher resume; a new outage is shared.
    etcd.restart();
    for (g, n) in all.iter().zip(&back_before) {
        g.wait_for("fleet_connected again", |g| {
            g.events("fleet_connected") > *n
        });
    }
    stage("the watch resumed");
    relay.set(Fault::Silent);
    drive_until(&g1, &origin, "gateway 1 ejects u1 again", || {
        g1.upstream("u1")["state"] == "ejected"
    });
    for g in &others {
        g.wait_for("u1 ejected by the fleet again", |g| {
            fleet_ejected(&g.upstream("u1"), "g1")
        });
        g.request(&origin);
        assert_eq!(sent_to(&g.upstream("u1")), 0);
    }
    stage("gateways 2 and 3 ejected u1 (fleet) again");
}

#[test]
fn a_dead_target_publishes_nothing() {
    let etcd = Etcd::start();
    let origin = EchoServer::start();
    let tiny: Vec<Tinyproxy> = (0..2)
        .map(|_| Tinyproxy::start(TinyOpts::default()))
        .collect();
    let relay = FaultRelay::start(tiny[0].addr(), Fault::Pass);
    let prefix = "/pgtest/target/";
    // A long ttl: at the end, its reports must vanish by the revoke at
    // shutdown, well before the lease could expire.
    let mut g = Gateway::start_ttl(
        "solo",
        &etcd,
        prefix,
        // Racing only after 2 s: no slow moment of a healthy upstream on a
        // loaded machine is blamed (which would publish it).
        "race_after = \"2s\"",
        &[("u1", relay.url("http"), 0), ("u2", tiny[1].url(), 1)],
        "60s",
    );
    g.wait_for("fleet_connected", |g| g.events("fleet_connected") >= 1);
    // CONNECT and plain requests to a closed port, through healthy upstreams.
    let dead = free_addr();
    for _ in 0..3 {
        let r = curl(&["-x", &g.pg.url(), "-k", &format!("https://{dead}/")]);
        assert_ne!(r.exit_code, 0, "{r:?}");
        let r = curl(&["-x", &g.pg.url(), &format!("http://{dead}/")]);
        assert!(r.status >= 500, "{r:?}");
    }
    for name in ["u1", "u2"] {
        let u = g.upstream(name);
        assert_eq!(u["state"], "healthy", "{u}");
        assert_eq!(u["failures"], 0, "a target fault is nobody's: {u}");
    }
    let keys = etcd.get_prefix(prefix);
    assert!(keys.trim().is_empty(), "{keys}");
    // The publisher works (an upstream fault shows up), and what it wrote is
    // u1's verdict alone: the dead target left nothing before it.
    relay.set(Fault::Silent);
    let ok = wait_until(WAIT, || {
        g.request(&origin);
        etcd.get_prefix(prefix).contains("\"state\":\"down\"")
    });
    assert!(ok, "u1's verdict never published\n{}", g.pg.logs());
    let keys = etcd.get_prefix(prefix);
    let lines: Vec<&str> = keys.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, "{keys}");
    assert!(lines[0].contains(&relay.addr.port().to_string()), "{keys}");
    assert!(!keys.contains(&tiny[1].port().to_string()), "{keys}");

    // A clean stop revokes the lease: the reports go at once, not after 60 s.
    g.pg.child.stop();
    let gone = wait_until(Duration::from_secs(20), || {
        etcd.get_prefix(prefix).trim().is_empty()
    });
    assert!(
        gone,
        "reports left after shutdown: {}",
        etcd.get_prefix(prefix)
    );
}
