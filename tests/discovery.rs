//! `[[discovery]]` against real sources on loopback: dnsmasq (A and SRV
//! records, changed by a new hosts file + SIGHUP, broken, killed), a real
//! etcd (put/delete, garbage, kill, restart) and files (edit, add, remove,
//! broken). Traffic is real curl through the gateway to nginx via real
//! tinyproxy upstreams; a discovery outage must cost no request.
//!
//! Times until a change shows are printed (bounded polls only, no timing
//! asserts): run with `--nocapture` to see them.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::discovery_peers::{port_free_on, HostsDns, TinyAt};
use support::etcd::Etcd;
use support::*;

/// Bound of every poll for a change to show (a hang guard, not a figure).
const SHOWS: Duration = Duration::from_secs(30);

fn config(listen: SocketAddr, admin: SocketAddr, extra: &str) -> String {
    format!(
        "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\n\n[admin]\naddr = \"{admin}\"\n\n\
         [pool]\nstrategy = \"round_robin\"\n\n[health]\ninterval = \"500ms\"\ntimeout = \"1s\"\n\n{extra}"
    )
}

fn status(admin: SocketAddr) -> serde_json::Value {
    let r = curl(&["-s", &format!("http://{admin}/status")]);
    serde_json::from_str(&r.body).unwrap_or(serde_json::Value::Null)
}

fn members(st: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = st["upstreams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn member<'a>(st: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    st["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == name)
}

fn events(st: &serde_json::Value, kind: &str) -> Vec<String> {
    st["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["kind"] == kind)
                .filter_map(|e| e["detail"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `/status` until `f` holds; returns how long that took.
fn wait_status(
    admin: SocketAddr,
    what: &str,
    pg: &Proxyguard,
    f: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let t0 = Instant::now();
    let ok = wait_until(SHOWS, || f(&status(admin)));
    assert!(
        ok,
        "{what}: not seen within {SHOWS:?}\nstatus: {:#}\n{}",
        status(admin),
        pg.logs()
    );
    let took = t0.elapsed();
    println!("{what}: {} ms", took.as_millis());
    took
}

fn sorted(v: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// `n` sequential requests in one curl (keep-alive to the gateway): the
/// (ok, failed) counts by HTTP status.
fn batch(proxy: &str, url: &str, n: usize) -> (u64, u64) {
    let (ok, failed) = batch_noted(proxy, url, n);
    (ok, failed.len() as u64)
}

/// Like [`batch`], with one line per request that did not get a 200:
/// curl's status (000: no HTTP answer), time and error, so a failed count
/// says what failed.
fn batch_noted(proxy: &str, url: &str, n: usize) -> (u64, Vec<String>) {
    let mut cmd = Command::new("curl");
    for v in PROXY_ENV_VARS {
        cmd.env_remove(v);
    }
    cmd.args(["-s", "-x", proxy, "--max-time", "20"]);
    for _ in 0..n {
        let w = "%{http_code} after %{time_total}s %{errormsg}\\n";
        cmd.args(["-o", "/dev/null", "-w", w, url]);
    }
    let out = run_cmd(cmd, Duration::from_secs(60));
    let lines: Vec<&str> = out.stdout.lines().collect();
    let ok = lines.iter().filter(|l| l.starts_with("200 ")).count() as u64;
    let mut failed: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with("200 "))
        .map(|l| format!("curl: {l}"))
        .collect();
    if lines.len() < n {
        failed.extend((lines.len()..n).map(|_| {
            format!(
                "curl: no result (exit {}, timed out {}): {}",
                out.code,
                out.timed_out,
                out.stderr.trim()
            )
        }));
    }
    (ok, failed)
}

/// The gateway's access-log lines of requests that did not get a 200.
fn failed_requests(pg: &Proxyguard) -> String {
    pg.logs()
        .lines()
        .filter(|l| l.contains("\"logger\":\"access\"") && !l.contains("\"status\":200,"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The gateway, logging the forward path, the attempt engine and health at
/// debug level, so a failed request in these tests leaves its cause.
fn gateway(cfg: &str) -> Proxyguard {
    Proxyguard::start_with(
        cfg,
        &[
            "--log-level",
            "info,proxyguard::forward=debug,proxyguard::route=debug,proxyguard::pool=debug",
        ],
        &[],
    )
}

/// Sequential requests through the gateway until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    /// What each failed request got (see [`batch_noted`]).
    notes: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Load {
    fn start(proxy: String, url: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let notes = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f, n) = (stop.clone(), ok.clone(), failed.clone(), notes.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most 2000 batches however long the test runs.
            for _ in 0..2000 {
                if s.load(Ordering::Relaxed) {
                    return;
                }
                let (a, b) = batch_noted(&proxy, &url, 10);
                o.fetch_add(a, Ordering::Relaxed);
                f.fetch_add(b.len() as u64, Ordering::Relaxed);
                n.lock().unwrap_or_else(|e| e.into_inner()).extend(b);
            }
        });
        Load {
            stop,
            ok,
            failed,
            notes,
            thread: Some(thread),
        }
    }

    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }

    /// Waits until `more` further requests completed.
    fn wait_more(&self, more: u64) {
        let target = self.done() + more;
        assert!(
            wait_until(Duration::from_secs(60), || self.done() >= target),
            "load loop stalled at {} requests",
            self.done()
        );
    }

    /// Stops; returns (ok, failed) and what the failed ones got.
    fn finish(mut self) -> (u64, u64, String) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let notes = self
            .notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .join("\n");
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            notes,
        )
    }
}

fn successes(st: &serde_json::Value, name: &str) -> u64 {
    member(st, name)
        .and_then(|m| m["successes"].as_u64())
        .unwrap_or(0)
}

/// Sends requests (3 at a time, all must succeed) until `/status` shows
/// that `name` carried traffic: its connect successes grew.
fn drive_until_used(admin: SocketAddr, proxy: &str, url: &str, name: &str, pg: &Proxyguard) {
    let before = successes(&status(admin), name);
    for _ in 0..30 {
        let (ok, failed) = batch_noted(proxy, url, 3);
        assert!(
            ok == 3 && failed.is_empty(),
            "{ok} of 3 ok; failed:\n{}\n{}",
            failed.join("\n"),
            pg.logs()
        );
        if successes(&status(admin), name) > before {
            return;
        }
    }
    panic!(
        "{name} carried no traffic\n{:#}\n{}",
        status(admin),
        pg.logs()
    );
}

/// The records vanish (NXDOMAIN), the server breaks (REFUSED), the server
/// dies — under a load loop that must see no failure.
fn dns_outages_under_load(
    admin: SocketAddr,
    proxy: &str,
    url: &str,
    dns: &mut HostsDns,
    pg: &Proxyguard,
) {
    let load = Load::start(proxy.to_string(), url.to_string());
    load.wait_more(20);
    dns.set_hosts("");
    wait_status(admin, "records gone -> error, set kept", pg, |st| {
        st["discovery"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("no upstreams"))
    });
    dns.restart(false);
    wait_status(admin, "REFUSED -> error, set kept", pg, |st| {
        st["discovery"][0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("answered") && e.contains("Refused"))
    });
    dns.kill();
    // Unanswered now (timeout or ICMP refusal), no longer an answer.
    wait_status(admin, "dnsmasq killed -> error, set kept", pg, |st| {
        st["discovery"][0]["last_error"]
            .as_str()
            .is_some_and(|e| !e.contains("answered") && !e.contains("no upstreams"))
    });
    load.wait_more(200);
    let (ok, failed, notes) = load.finish();
    let st = status(admin);
    println!("dns outage under load: {ok} ok, {failed} failed");
    assert_eq!(
        failed,
        0,
        "requests failed during the DNS outage\n{notes}\nfailed in the access log:\n{}\n{}",
        failed_requests(pg),
        pg.logs()
    );
    assert!(ok >= 220, "{ok}");
    assert_eq!(st["discovery"][0]["ok"], false, "{st:#}");
    assert_eq!(st["discovery"][0]["members"], 2, "{st:#}");
    assert!(!events(&st, "discovery_error").is_empty(), "{st:#}");
}

#[test]
fn dns_a_records_follow_the_hosts_file_and_an_outage_keeps_the_set() {
    let nginx = Nginx::start();
    let url = format!("{}/small", nginx.url());
    let port = port_free_on(&[[127, 0, 0, 2], [127, 0, 0, 3]]);
    let _p2 = TinyAt::start(SocketAddr::from(([127, 0, 0, 2], port)));
    let _p3 = TinyAt::start(SocketAddr::from(([127, 0, 0, 3], port)));
    let stat = Tinyproxy::start(TinyOpts::default());
    let mut dns = HostsDns::start("127.0.0.2 egress.test\n", &[]);
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = config(
        listen,
        admin,
        &format!(
            "[[upstream]]\nname = \"static\"\nurl = \"{}\"\n\n[[discovery]]\nkind = \"dns\"\nname = \"egress.test\"\nport = {port}\ninterval = \"1s\"\ndns_server = \"{}\"\n",
            stat.url(),
            dns.addr
        ),
    );
    let pg = gateway(&cfg);
    let proxy = format!("http://{listen}");
    let m2 = format!("dns:egress.test/127.0.0.2:{port}");
    let m3 = format!("dns:egress.test/127.0.0.3:{port}");

    // The first answer joins the pool beside the static upstream (serve
    // waits up to 5 s for each source's first round; polled here anyway).
    let want = sorted(&["static", &m2]);
    wait_status(admin, "first DNS answer -> member", &pg, |st| {
        members(st) == want
    });
    let st = status(admin);
    assert_eq!(member(&st, "static").unwrap()["source"], "config");
    assert_eq!(member(&st, &m2).unwrap()["source"], "dns");
    assert_eq!(
        member(&st, &m2).unwrap()["url"],
        format!("http://127.0.0.2:{port}")
    );
    drive_until_used(admin, &proxy, &url, &m2, &pg);
    let before = successes(&status(admin), &m2);

    // A new address: a new member within the interval; traffic reaches it;
    // the unchanged member keeps its health and counters.
    dns.set_hosts("127.0.0.2 egress.test\n127.0.0.3 egress.test\n");
    wait_status(admin, "A record added -> member", &pg, |st| {
        member(st, &m3).is_some()
    });
    drive_until_used(admin, &proxy, &url, &m3, &pg);
    let st = status(admin);
    assert!(
        successes(&st, &m2) >= before,
        "member lost its counters: {st:#}"
    );
    assert!(
        events(&st, "discovery_update")
            .iter()
            .any(|d| d.contains("added") && d.contains(&m3)),
        "{st:#}"
    );

    // Outages under load: each keeps the last good set, no request fails.
    dns_outages_under_load(admin, &proxy, &url, &mut dns, &pg);
    let st = status(admin);
    assert_eq!(members(&st), sorted(&["static", &m2, &m3]), "{st:#}");

    // Back with one address: recovered, the other member removed.
    dns.set_hosts("127.0.0.2 egress.test\n");
    dns.restart(true);
    wait_status(
        admin,
        "dnsmasq back -> recovered, member removed",
        &pg,
        |st| members(st) == sorted(&["static", &m2]) && st["discovery"][0]["ok"] == true,
    );
    let st = status(admin);
    assert!(!events(&st, "discovery_recovered").is_empty(), "{st:#}");
    let metrics = curl(&["-s", &format!("http://{admin}/metrics")]).body;
    assert!(
        metrics.contains("proxyguard_discovery_members{source=\"dns\",id=\"dns:egress.test\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(
            |l| l.starts_with("proxyguard_discovery_errors_total{source=\"dns\"")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    drop(dns);
}

#[test]
fn dns_srv_records_give_port_priority_and_weight() {
    let nginx = Nginx::start();
    let url = format!("{}/small", nginx.url());
    let a = Tinyproxy::start(TinyOpts::default());
    let pb = port_free_on(&[[127, 0, 0, 1], [127, 0, 0, 2]]);
    let _b1 = TinyAt::start(SocketAddr::from(([127, 0, 0, 1], pb)));
    let _b2 = TinyAt::start(SocketAddr::from(([127, 0, 0, 2], pb)));
    let srv = vec![
        format!("_proxy._tcp.egress.test,proxy-a.test,{},0,10", a.port()),
        format!("_proxy._tcp.egress.test,proxy-b.test,{pb},1,5"),
    ];
    let dns = HostsDns::start("127.0.0.1 proxy-a.test\n127.0.0.1 proxy-b.test\n", &srv);
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = config(
        listen,
        admin,
        &format!(
            "[[discovery]]\nkind = \"dns\"\nname = \"_proxy._tcp.egress.test\"\ninterval = \"1s\"\ndns_server = \"{}\"\n",
            dns.addr
        ),
    )
    // failover without racing or hedging: every request goes to the
    // preferred member unless it fails.
    .replace(
        "strategy = \"round_robin\"",
        "strategy = \"failover\"\nrace_after = \"off\"\nhedge_after = \"off\"",
    );
    let pg = gateway(&cfg);
    let ma = format!("dns:_proxy._tcp.egress.test/127.0.0.1:{}", a.port());
    let mb = format!("dns:_proxy._tcp.egress.test/127.0.0.1:{pb}");
    let mb2 = format!("dns:_proxy._tcp.egress.test/127.0.0.2:{pb}");
    let want = sorted(&[&ma, &mb]);
    wait_status(admin, "first SRV answer -> members", &pg, |st| {
        members(st) == want
    });
    let st = status(admin);
    assert_eq!(member(&st, &ma).unwrap()["priority"], 0);
    assert_eq!(member(&st, &mb).unwrap()["priority"], 1);
    // failover: the SRV priority decides; everything goes to proxy-a.
    drive_until_used(admin, &format!("http://{listen}"), &url, &ma, &pg);
    let st = status(admin);
    assert_eq!(successes(&st, &mb), 0, "{st:#}");
    // A second address for an SRV target: a new member on the SRV's port.
    dns.set_hosts("127.0.0.1 proxy-a.test\n127.0.0.1 proxy-b.test\n127.0.0.2 proxy-b.test\n");
    wait_status(admin, "SRV target address added -> member", &pg, |st| {
        member(st, &mb2).is_some_and(|m| m["priority"] == 1)
    });
    // A target that stops resolving is garbage: the last good set stays.
    dns.set_hosts("127.0.0.1 proxy-a.test\n");
    wait_status(
        admin,
        "SRV target unresolvable -> error, set kept",
        &pg,
        |st| {
            st["discovery"][0]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("proxy-b.test"))
        },
    );
    assert_eq!(members(&status(admin)), sorted(&[&ma, &mb, &mb2]));
}

fn etcd_entry(url: &str) -> String {
    format!("{{\"url\": \"{url}\"}}")
}

#[test]
fn etcd_keys_come_and_go_and_an_etcd_outage_costs_no_request() {
    let nginx = Nginx::start();
    let url = format!("{}/small", nginx.url());
    let ps: Vec<Tinyproxy> = (0..3)
        .map(|_| Tinyproxy::start(TinyOpts::default()))
        .collect();
    let mut etcd = Etcd::start();
    let prefix = "/proxyguard/upstreams/";
    etcd.put(&format!("{prefix}a"), &etcd_entry(&ps[0].url()));
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = config(
        listen,
        admin,
        &format!(
            "[[discovery]]\nkind = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{prefix}\"\n",
            etcd.endpoint()
        ),
    );
    let pg = gateway(&cfg);
    let proxy = format!("http://{listen}");
    wait_status(admin, "first etcd read -> member", &pg, |st| {
        members(st) == ["etcd:a"]
    });
    assert_eq!(member(&status(admin), "etcd:a").unwrap()["source"], "etcd");

    // put → used; garbage → error naming the key, last good kept; delete → gone.
    etcd.put(&format!("{prefix}b"), &etcd_entry(&ps[1].url()));
    let took_put = wait_status(admin, "etcd put -> member", &pg, |st| {
        member(st, "etcd:b").is_some()
    });
    drive_until_used(admin, &proxy, &url, "etcd:b", &pg);
    etcd.put(&format!("{prefix}b"), "{\"url\": ");
    wait_status(admin, "etcd garbage -> error", &pg, |st| {
        events(st, "discovery_error")
            .iter()
            .any(|d| d.contains("/proxyguard/upstreams/b"))
    });
    assert_eq!(members(&status(admin)), ["etcd:a", "etcd:b"]);
    etcd.delete(&format!("{prefix}a"));
    let took_delete = wait_status(admin, "etcd delete -> member gone", &pg, |st| {
        members(st) == ["etcd:b"]
    });
    println!(
        "etcd put visible after {} ms, delete after {} ms",
        took_put.as_millis(),
        took_delete.as_millis()
    );
    etcd.put(&format!("{prefix}b"), &etcd_entry(&ps[1].url()));
    wait_status(admin, "etcd key fixed -> recovered", &pg, |st| {
        st["discovery"][0]["ok"] == true
    });

    // The removed key comes back: a member again (a new one, fresh health).
    // Two members through the outage: what the gateway promises is that no
    // request fails while a healthy upstream remains, and with one member
    // a transient failure of that one tinyproxy (nothing to do with etcd)
    // would cost a request no gateway could save.
    etcd.put(&format!("{prefix}a"), &etcd_entry(&ps[0].url()));
    wait_status(admin, "etcd key re-added -> member", &pg, |st| {
        members(st) == ["etcd:a", "etcd:b"]
    });

    // etcd killed under load: the pool is unchanged, an event is raised,
    // no request fails, and both members keep carrying traffic.
    let load = Load::start(proxy.clone(), url.clone());
    load.wait_more(20);
    etcd.kill();
    wait_status(admin, "etcd killed -> error event", &pg, |st| {
        st["discovery"][0]["ok"] == false
            && events(st, "discovery_error")
                .iter()
                .any(|d| d.contains("reconnecting"))
    });
    let st = status(admin);
    let before = [successes(&st, "etcd:a"), successes(&st, "etcd:b")];
    load.wait_more(200);
    let (ok, failed, notes) = load.finish();
    println!("etcd outage under load: {ok} ok, {failed} failed");
    assert_eq!(
        failed,
        0,
        "requests failed during the etcd outage\n{notes}\nfailed in the access log:\n{}\n{}",
        failed_requests(&pg),
        pg.logs()
    );
    let st = status(admin);
    assert_eq!(members(&st), ["etcd:a", "etcd:b"], "{st:#}");
    assert!(
        successes(&st, "etcd:a") > before[0] && successes(&st, "etcd:b") > before[1],
        "a member stopped carrying traffic during the outage: {before:?}\n{st:#}"
    );

    // Restarted: the watch resumes (a put after the restart is picked up).
    etcd.restart();
    wait_status(admin, "etcd restarted -> recovered", &pg, |st| {
        st["discovery"][0]["ok"] == true
    });
    etcd.put(&format!("{prefix}c"), &etcd_entry(&ps[2].url()));
    wait_status(admin, "put after restart -> member", &pg, |st| {
        members(st) == ["etcd:a", "etcd:b", "etcd:c"]
    });
    assert!(!events(&status(admin), "discovery_recovered").is_empty());
}

#[test]
fn files_edit_add_remove_and_a_broken_file_keeps_its_last_good_set() {
    let nginx = Nginx::start();
    let url = format!("{}/small", nginx.url());
    let ps: Vec<Tinyproxy> = (0..3)
        .map(|_| Tinyproxy::start(TinyOpts::default()))
        .collect();
    let dir = temp_dir("upstreams.d", false);
    let a = dir.path().join("a.toml");
    let b = dir.path().join("b.json");
    let entry = |n: &str, u: &str| format!("[[upstream]]\nname = \"{n}\"\nurl = \"{u}\"\n");
    write_file(&a, entry("a", &ps[0].url()), 0o644);
    let (listen, admin) = (free_addr(), free_addr());
    let cfg = config(
        listen,
        admin,
        &format!(
            "[[discovery]]\nkind = \"file\"\npath = \"{}/*\"\n",
            dir.path().display()
        ),
    );
    let pg = gateway(&cfg);
    let proxy = format!("http://{listen}");
    wait_status(admin, "first file read -> member", &pg, |st| {
        members(st) == ["file:a"]
    });
    assert_eq!(member(&status(admin), "file:a").unwrap()["source"], "file");

    // add
    write_file(
        &b,
        format!("[{{\"name\": \"b\", \"url\": \"{}\"}}]", ps[1].url()),
        0o644,
    );
    wait_status(admin, "file added -> member", &pg, |st| {
        members(st) == ["file:a", "file:b"]
    });
    // edit: a new entry for the same name is a new member on the new URL.
    write_file(&a, entry("a", &ps[2].url()), 0o644);
    let new_url = ps[2].url();
    wait_status(admin, "file edited -> member re-pointed", &pg, |st| {
        member(st, "file:a").is_some_and(|m| m["url"] == new_url.as_str())
    });
    drive_until_used(admin, &proxy, &url, "file:a", &pg);

    // broken: the last good set stays; the error names file and line.
    write_file(
        &a,
        format!(
            "{}\n[[upstream]]\nname = \"x\"\nurl = \"ftp://nope\"\n",
            entry("a", &ps[2].url())
        ),
        0o644,
    );
    let want = format!("{}:5", a.display());
    wait_status(admin, "broken file -> error with line", &pg, |st| {
        events(st, "discovery_error")
            .iter()
            .any(|d| d.contains(&want))
    });
    assert!(
        wait_until(SHOWS, || pg.logs().contains(&want)),
        "error with file:line not logged\n{}",
        pg.logs()
    );
    let st = status(admin);
    assert_eq!(members(&st), ["file:a", "file:b"], "{st:#}");
    assert!(member(&st, "file:a").is_some_and(|m| m["url"] == new_url.as_str()));
    let (ok, failed) = batch(&proxy, &url, 4);
    assert_eq!((ok, failed), (4, 0), "{}", pg.logs());

    // Visible: `proxyguard status` and the status page (a real browser)
    // show each member's source and the failing source.
    let out = proxyguard_run(
        &["status", "--admin", &admin.to_string()],
        &[],
        Duration::from_secs(20),
    );
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("file:b"))
        .unwrap_or("");
    assert!(row.split_whitespace().nth(1) == Some("file"), "{out:?}");
    assert!(
        out.stdout.contains("discovery file:")
            && out.stdout.contains("FAILING (keeping its last set)"),
        "{out:?}"
    );
    let dom = support::browser::chromium_dom(&format!("http://{admin}/"));
    assert!(
        dom.contains("data-upstream=\"file:a\"") && dom.contains("from file"),
        "{dom}"
    );
    assert!(
        dom.contains("data-discovery=\"file:") && dom.contains("failing, keeping its last set"),
        "{dom}"
    );

    // remove
    std::fs::remove_file(&b).unwrap();
    wait_status(admin, "file removed -> member gone", &pg, |st| {
        members(st) == ["file:a"]
    });
    // fixed: recovered.
    write_file(&a, entry("a", &ps[2].url()), 0o644);
    wait_status(admin, "file fixed -> recovered", &pg, |st| {
        st["discovery"][0]["ok"] == true
    });
}
