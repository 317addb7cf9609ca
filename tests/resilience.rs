//! Fault injection against real upstreams (tinyproxy) with a real Go
//! net/http client (`hey`, which takes the proxy with `-x` and so also
//! proxies loopback targets): kill -9, SYN blackhole, 407/502 answers, a slow
//! upstream, all down, breaker timing. Each case prints its figures.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::hey::*;
use support::*;

/// Scenarios measure latency: run them one at a time on these small machines.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool_config(listen: SocketAddr, upstreams: &[String], extra_top: &str, extra: &str) -> String {
    let mut s = format!("bypass_loopback = false\n{extra_top}\n[[listen]]\naddr = \"{listen}\"\nprotocol = \"mixed\"\n\n");
    for (i, u) in upstreams.iter().enumerate() {
        s.push_str(&format!(
            "[[upstream]]\nname = \"u{i}\"\nurl = \"{u}\"\npriority = {i}\n\n"
        ));
    }
    s.push_str(extra);
    s
}

/// A fake upstream proxy that answers every request with `status`.
struct FakeProxy {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl FakeProxy {
    fn start(status: u16, extra_header: &'static str) -> FakeProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        std::thread::spawn(move || {
                            let _ = s.set_nonblocking(false);
                            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                            let mut buf = [0u8; 4096];
                            let mut got = Vec::new();
                            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                                match s.read(&mut buf) {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => got.extend_from_slice(&buf[..n]),
                                }
                            }
                            let _ = write!(s, "HTTP/1.1 {status} Nope\r\n{extra_header}Content-Length: 0\r\nConnection: close\r\n\r\n");
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        FakeProxy { addr, stop }
    }
}

impl Drop for FakeProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A relay that waits `delay` before connecting on to `to`: a slow upstream.
struct SlowRelay {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl SlowRelay {
    fn start(to: SocketAddr, delay: Duration) -> SlowRelay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((a, _)) => {
                        std::thread::spawn(move || {
                            let _ = a.set_nonblocking(false);
                            std::thread::sleep(delay);
                            let Ok(b) = TcpStream::connect(to) else {
                                return;
                            };
                            let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
                            let t = std::thread::spawn(move || {
                                let _ = std::io::copy(&mut a2, &mut b2);
                                let _ = b2.shutdown(std::net::Shutdown::Write);
                            });
                            let (mut a, mut b) = (a, b);
                            let _ = std::io::copy(&mut b, &mut a);
                            let _ = a.shutdown(std::net::Shutdown::Write);
                            let _ = t.join();
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        SlowRelay { addr, stop }
    }
}

impl Drop for SlowRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Drops SYNs to a loopback port with iptables; removed on drop.
struct Blackhole {
    port: u16,
}

impl Blackhole {
    fn new(port: u16) -> Blackhole {
        let out = Command::new("iptables")
            .args([
                "-I",
                "INPUT",
                "-i",
                "lo",
                "-p",
                "tcp",
                "--dport",
                &port.to_string(),
                "--syn",
                "-j",
                "DROP",
            ])
            .output()
            .expect(
                "iptables (root) is needed for the blackhole scenario; scripts/test installs it",
            );
        assert!(
            out.status.success(),
            "iptables failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Blackhole { port }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args([
                "-D",
                "INPUT",
                "-i",
                "lo",
                "-p",
                "tcp",
                "--dport",
                &self.port.to_string(),
                "--syn",
                "-j",
                "DROP",
            ])
            .output();
    }
}

#[test]
fn scenario1_kill9_one_upstream_mid_run_no_failed_requests() {
    let _serial = serial();
    let nginx = Nginx::start();
    let mut t = Tinyproxy::many(3);
    let listen = free_addr();
    let ups: Vec<String> = t.iter().map(|x| x.url()).collect();
    let pg = Proxyguard::start(&pool_config(
        listen,
        &ups,
        "",
        "[pool]\nstrategy = \"round_robin\"\n",
    ));
    let proxy = format!("http://{listen}");
    let url = format!("{}/small", nginx.url());
    let https = format!("{}/small", nginx.https_url());
    let (p1, u1, p2, u2) = (proxy.clone(), url.clone(), proxy.clone(), https.clone());
    let plain = std::thread::spawn(move || hey(&p1, &u1, 2000, 10, &[]));
    let (p3, u3) = (proxy.clone(), https.clone());
    let tunnel = std::thread::spawn(move || hey(&p2, &u2, 2000, 10, &[]));
    let fresh = std::thread::spawn(move || hey(&p3, &u3, 2000, 10, &["-disable-keepalive"]));
    assert!(wait_until(Duration::from_secs(20), || nginx.requests() >= 400));
    t[0].child.kill9();
    let (plain, tunnel) = (plain.join().unwrap(), tunnel.join().unwrap());
    eprintln!("scenario 1 (kill -9): plain ok={} failed={} p50={:.1}ms p99={:.1}ms; CONNECT ok={} failed={} p50={:.1}ms p99={:.1}ms",
        plain.ok, plain.errors + plain.other_status, plain.p50_ms, plain.p99_ms,
        tunnel.ok, tunnel.errors + tunnel.other_status, tunnel.p50_ms, tunnel.p99_ms);
    assert_eq!(
        (plain.ok, plain.errors, plain.other_status),
        (2000, 0, 0),
        "{}\n{}",
        plain.raw,
        pg.logs()
    );
    // Keep-alive tunnels (Go's default): a reused tunnel cut by the kill is
    // retried by Go on a new CONNECT, which proxyguard routes to a live
    // upstream. Go does not retry on a connection it has not used yet, so a
    // tunnel opened through the proxy just before the kill can lose its one
    // request: at most the 10 in flight (seen: 0 in most runs, 1 in ~1 of 8).
    assert!(
        tunnel.ok >= 1990 && tunnel.other_status == 0,
        "{}\n{}",
        tunnel.raw,
        pg.logs()
    );
    // A fresh tunnel per request: bytes already inside a tunnel through the
    // killed proxy cannot be saved, so only requests in flight at the kill may
    // fail; every new tunnel must succeed.
    let fresh = fresh.join().unwrap();
    eprintln!(
        "scenario 1 (kill -9), fresh CONNECT per request: ok={} failed={} p99={:.1}ms",
        fresh.ok,
        fresh.errors + fresh.other_status,
        fresh.p99_ms
    );
    assert!(fresh.ok >= 1990, "{}\n", fresh.raw);

    // Comparison: the same Go client talking straight to a proxy that dies
    // mid-run (no proxyguard), measured the same way.
    let mut lone = Tinyproxy::many(1);
    let p = lone[0].url();
    let u = url.clone();
    let direct = std::thread::spawn(move || hey(&p, &u, 2000, 10, &["-disable-keepalive"]));
    let before = nginx.requests();
    assert!(wait_until(Duration::from_secs(20), || nginx.requests() >= before + 400));
    lone[0].child.kill9();
    let direct = direct.join().unwrap();
    eprintln!(
        "scenario 1 comparison (Go client straight to the dying proxy): ok={} failed={} p99={:.1}ms",
        direct.ok,
        direct.errors + direct.other_status,
        direct.p99_ms
    );
    assert!(
        direct.errors + direct.other_status > 0,
        "the lone proxy's death should hurt a direct client"
    );
}

#[test]
fn scenario2_blackholed_upstream_costs_at_most_race_after() {
    let _serial = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(3);
    let listen = free_addr();
    let ups: Vec<String> = t.iter().map(|x| x.url()).collect();
    let pg = Proxyguard::start(&pool_config(
        listen,
        &ups,
        "",
        "[pool]\nstrategy = \"round_robin\"\nrace_after = \"200ms\"\n[health]\ninterval = \"1s\"\n",
    ));
    let proxy = format!("http://{listen}");
    let url = format!("{}/small", nginx.https_url());
    // Baseline on the same machine, same moment: "added latency" is relative.
    let base = hey(&proxy, &url, 1000, 10, &["-disable-keepalive"]);
    assert_eq!(base.ok, 1000, "{}", base.raw);
    let _bh = Blackhole::new(t[1].port());
    let r = hey(&proxy, &url, 2000, 10, &["-disable-keepalive"]);
    let added = r.p99_ms - base.p99_ms;
    eprintln!(
        "scenario 2 (SYN blackhole): ok={} failed={} p50={:.1}ms p99={:.1}ms (baseline p99 {:.1}ms, added {:.1}ms)",
        r.ok, r.errors + r.other_status, r.p50_ms, r.p99_ms, base.p99_ms, added
    );
    assert_eq!(
        (r.ok, r.errors, r.other_status),
        (2000, 0, 0),
        "{}\n{}",
        r.raw,
        pg.logs()
    );
    assert!(
        added <= 250.0,
        "p99 added {added} ms > race_after + 50 ms\n{}",
        r.raw
    );
    assert!(
        pg.logs().contains("upstream ejected"),
        "blackholed upstream never ejected"
    );

    // Comparison: a Go client straight to the blackholed proxy (hey -t 5 s
    // per request).
    let t0 = Instant::now();
    let direct = hey(
        &t[1].url(),
        &format!("{}/small", nginx.url()),
        20,
        10,
        &["-t", "5"],
    );
    eprintln!(
        "scenario 2 comparison (Go client straight to the blackholed proxy): ok={} failed={} in {:?}",
        direct.ok,
        direct.errors + direct.other_status,
        t0.elapsed()
    );
    assert_eq!(direct.ok, 0, "{}", direct.raw);
}

#[test]
fn scenario3_upstream_answering_407_or_502_is_ejected_with_reason() {
    let _serial = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(2);
    let f407 = FakeProxy::start(407, "Proxy-Authenticate: Basic realm=\"x\"\r\n");
    let f502 = FakeProxy::start(502, "");
    let listen = free_addr();
    let ups = vec![
        format!("http://{}", f407.addr),
        format!("http://{}", f502.addr),
        t[0].url(),
        t[1].url(),
    ];
    let pg = Proxyguard::start(&pool_config(
        listen,
        &ups,
        "",
        "[pool]\nstrategy = \"round_robin\"\nmax_attempts = 4\nbase_ejection = \"60s\"\n",
    ));
    let proxy = format!("http://{listen}");
    let a = hey(
        &proxy,
        &format!("{}/small", nginx.https_url()),
        1000,
        10,
        &["-disable-keepalive"],
    );
    let b = hey(&proxy, &format!("{}/small", nginx.url()), 1000, 10, &[]);
    eprintln!(
        "scenario 3 (407/502): CONNECT ok={} failed={}; plain ok={} failed={}",
        a.ok,
        a.errors + a.other_status,
        b.ok,
        b.errors + b.other_status
    );
    assert_eq!(
        (a.ok, a.errors, a.other_status),
        (1000, 0, 0),
        "{}\n{}",
        a.raw,
        pg.logs()
    );
    assert_eq!(
        (b.ok, b.errors, b.other_status),
        (1000, 0, 0),
        "{}\n{}",
        b.raw,
        pg.logs()
    );
    let logs = pg.json_logs();
    let ejected: Vec<_> = logs
        .iter()
        .filter(|l| l["message"] == "upstream ejected")
        .collect();
    assert!(
        ejected
            .iter()
            .any(|l| l["upstream"] == "u0" && l["reason"] == "auth"),
        "{}",
        pg.logs()
    );
    assert!(
        ejected
            .iter()
            .any(|l| l["upstream"] == "u1" && l["reason"] == "proxy_error"),
        "{}",
        pg.logs()
    );
}

#[test]
fn scenario4_least_latency_moves_off_slow_upstream() {
    let _serial = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(2);
    let slow = SlowRelay::start(t[0].addr(), Duration::from_millis(300));
    let listen = free_addr();
    let ups = vec![format!("http://{}", slow.addr), t[1].url()];
    let pg = Proxyguard::start(&pool_config(
        listen,
        &ups,
        "",
        "[pool]\nstrategy = \"least_latency\"\nrace_after = \"off\"\n",
    ));
    let proxy = format!("http://{listen}");
    let start = Instant::now();
    let r = hey(
        &proxy,
        &format!("{}/small", nginx.https_url()),
        300,
        2,
        &["-disable-keepalive"],
    );
    assert_eq!(r.ok, 300, "{}", r.raw);
    let logs = pg.json_logs();
    let tunnels: Vec<_> = logs.iter().filter(|l| l["kind"] == "connect").collect();
    let last: Vec<_> = tunnels.iter().rev().take(100).collect();
    let slow_share = last.iter().filter(|l| l["upstream"] == "u0").count();
    eprintln!("scenario 4 (slow 300ms): {} tunnels in {:?}; slow upstream got {slow_share} of the last 100; p50={:.1}ms p99={:.1}ms",
        tunnels.len(), start.elapsed(), r.p50_ms, r.p99_ms);
    assert!(start.elapsed() < Duration::from_secs(10) || slow_share == 0);
    assert!(
        slow_share <= 5,
        "least_latency kept using the slow upstream"
    );
}

#[test]
fn scenario5_all_down_prompt_502_then_recovery_within_one_interval() {
    let _serial = serial();
    let nginx = Nginx::start();
    let dead1 = free_addr();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let tiny_port = tiny.port();
    drop(tiny); // now dead too; the port comes back later
    let listen = free_addr();
    let ups = vec![
        format!("http://{dead1}"),
        format!("http://127.0.0.1:{tiny_port}"),
    ];
    let pg = Proxyguard::start(&pool_config(
        listen,
        &ups,
        "",
        "[health]\ninterval = \"1s\"\n",
    ));
    let proxy = format!("http://{listen}");
    let t0 = Instant::now();
    let r = curl(&["-x", &proxy, &format!("{}/small", nginx.url())]);
    let took = t0.elapsed();
    eprintln!("scenario 5 (all down): status {} in {:?}", r.status, took);
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        r.headers
            .to_ascii_lowercase()
            .contains("proxy-status: proxyguard; error=connection_refused"),
        "{r:?}"
    );
    assert!(took < Duration::from_secs(2));
    // Bring one back on the same port: traffic returns within one interval.
    let cfg_dir = temp_dir("tiny-back", false);
    let conf = cfg_dir.path().join("t.conf");
    std::fs::write(&conf, format!("Port {tiny_port}\nListen 127.0.0.1\nAllow 127.0.0.1\nMaxClients 100\nLogLevel Critical\n")).unwrap();
    let mut cmd = Command::new("tinyproxy");
    cmd.args(["-d", "-c", conf.to_str().unwrap()]);
    let _back = Child::spawn("tinyproxy-back", cmd, cfg_dir.path());
    assert!(wait_port(
        format!("127.0.0.1:{tiny_port}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    let back = Instant::now();
    let ok = wait_until(Duration::from_secs(5), || {
        curl(&["-x", &proxy, &format!("{}/small", nginx.url())]).status == 200
    });
    eprintln!("scenario 5: recovered in {:?}", back.elapsed());
    assert!(ok, "{}", pg.logs());
    // One health interval (1 s) plus a loaded machine's slack for the
    // check and the curl; far below the ejection backoff it must not wait.
    assert!(
        back.elapsed() <= Duration::from_secs(3),
        "took {:?}",
        back.elapsed()
    );

    // fallback = "direct": everything dead still serves, and says so.
    let listen = free_addr();
    let ups = vec![format!("http://{dead1}")];
    let pg = Proxyguard::start(
        &pool_config(
            listen,
            &ups,
            "",
            "[pool]\nfallback = \"direct\"\n[upstream.0]\n",
        )
        .replace("[upstream.0]\n", ""),
    );
    let proxy = format!("http://{listen}");
    // First request ejects the dead one (max_fails 3 needs a few).
    for _ in 0..4 {
        curl(&["-x", &proxy, &format!("{}/small", nginx.url())]);
    }
    let r = curl(&["-x", &proxy, &format!("{}/small", nginx.url())]);
    assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    assert!(pg.logs().contains("degraded to direct"), "{}", pg.logs());
}

#[test]
fn scenario6_breaker_transitions_at_configured_times() {
    let _serial = serial();
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let port = tiny.port();
    drop(tiny);
    let listen = free_addr();
    let ups = vec![format!("http://127.0.0.1:{port}")];
    let pg = Proxyguard::start(&pool_config(
        listen,
        &ups,
        "",
        "[health]\nenabled = false\n[breaker]\nfailure_threshold = 3\nopen_for = \"2s\"\n[pool]\nmax_attempts = 1\n",
    ).replace("[[upstream]]\nname = \"u0\"", "[[upstream]]\nmax_fails = 100\nname = \"u0\""));
    let proxy = format!("http://{listen}");
    for _ in 0..3 {
        curl(&["-x", &proxy, &format!("{}/small", nginx.url())]);
    }
    let opened = Instant::now();
    let dir = temp_dir("tiny-breaker", false);
    let conf = dir.path().join("t.conf");
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nMaxClients 100\nLogLevel Critical\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new("tinyproxy");
    cmd.args(["-d", "-c", conf.to_str().unwrap()]);
    let _back = Child::spawn("tinyproxy-breaker", cmd, dir.path());
    assert!(wait_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(5)
    ));
    // While open: refused fast, even though the upstream is back.
    let r = curl(&["-x", &proxy, &format!("{}/small", nginx.url())]);
    assert_eq!(r.status, 502, "breaker should still be open: {r:?}");
    // After open_for: half-open lets a trial through, which closes it.
    assert!(wait_until(Duration::from_secs(5), || {
        curl(&["-x", &proxy, &format!("{}/small", nginx.url())]).status == 200
    }));
    let closed_after = opened.elapsed();
    eprintln!("scenario 6 (breaker): closed again after {closed_after:?} (open_for 2s)");
    assert!(
        closed_after >= Duration::from_millis(1900),
        "{closed_after:?}"
    );
    let logs = pg.json_logs();
    let order: Vec<String> = logs
        .iter()
        .filter_map(|l| l["message"].as_str())
        .filter(|m| m.starts_with("breaker"))
        .map(String::from)
        .collect();
    assert_eq!(
        order,
        ["breaker opened", "breaker half-open", "breaker closed"],
        "{}",
        pg.logs()
    );
}

/// Scenario 7: an upstream proxy whose own path to the origin is broken
/// answers plain HTTP with 502. Safe requests go to another upstream, the
/// client sees only 200s, and the broken proxy is ejected (reason
/// proxy_error). When the origin itself answers 502, every upstream relays
/// it: the client gets the origin's answer and nothing is ejected.
#[test]
fn scenario7_gateway_error_from_upstream_proxy_retried_elsewhere() {
    let _serial = serial();
    let nginx = Nginx::start();
    let t = Tinyproxy::many(2);
    // Round robin; active checks off, so only the request path can find faults.
    let start = |ups: &[String]| {
        let listen = free_addr();
        let cfg = "[pool]\nstrategy = \"round_robin\"\n[health]\nenabled = false\n";
        (
            listen,
            Proxyguard::start(&pool_config(listen, ups, "", cfg)),
        )
    };
    let f502 = FakeProxy::start(502, "");
    let (listen, pg) = start(&[format!("http://{}", f502.addr), t[0].url()]);
    let proxy = format!("http://{listen}");
    let r = hey(&proxy, &format!("{}/small", nginx.url()), 300, 5, &[]);
    eprintln!(
        "scenario 7 (upstream 502): ok={} failed={} p99={:.1}ms",
        r.ok,
        r.errors + r.other_status,
        r.p99_ms
    );
    assert_eq!(
        (r.ok, r.errors, r.other_status),
        (300, 0, 0),
        "{}\n{}",
        r.raw,
        pg.logs()
    );
    let logs = pg.json_logs();
    assert!(
        logs.iter().any(|l| l["message"] == "upstream ejected"
            && l["upstream"] == "u0"
            && l["reason"] == "proxy_error"),
        "{}",
        pg.logs()
    );
    drop(pg);

    // The origin's own 502 through two healthy proxies.
    let origin502 = FakeProxy::start(502, "");
    let (listen, pg) = start(&[t[0].url(), t[1].url()]);
    let r = hey(
        &format!("http://{listen}"),
        &format!("http://{}/x", origin502.addr),
        40,
        2,
        &[],
    );
    assert_eq!((r.ok, r.errors), (0, 0), "{}", r.raw);
    assert_eq!(r.other_status, 40, "{}", r.raw);
    assert!(
        !pg.json_logs()
            .iter()
            .any(|l| l["message"] == "upstream ejected"),
        "an origin's 502 ejected a healthy proxy:\n{}",
        pg.logs()
    );
}
