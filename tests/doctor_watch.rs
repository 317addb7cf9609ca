//! Doctor's watching modes against real peers: `--repeat` on a flapping
//! path, `--hold` finding a real proxy's idle timeout (tinyproxy `Timeout 3`)
//! and a silent idle drop (a relay in front of tinyproxy), and `--dns`
//! compared against dnsmasq.

mod support;

use std::time::Duration;

use support::doctor_peers::*;
use support::*;

#[test]
fn repeat_summarises_a_flapping_path() {
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let flap = Relay::flapping(tiny.addr());
    let proxy = format!("http://{}", flap.addr);
    let small = format!("{}/small", nginx.url());
    let args = [
        "--timeout",
        "3s",
        "--proxy",
        &proxy,
        "--repeat",
        "6",
        "--interval",
        "50ms",
        &small,
    ];
    let d = doctor(&args);
    println!("{}", d.human);
    assert_eq!(d.code, 1, "a failed run exits 1: {}", d.human);
    let runs = d.json["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 6);
    let oks: Vec<bool> = runs.iter().map(|r| r["ok"].as_bool().unwrap()).collect();
    assert_eq!(oks.iter().filter(|o| **o).count(), 3, "{oks:?}");
    let s = &d.json["summary"];
    assert_eq!(
        (s["runs"].as_u64(), s["ok"].as_u64(), s["failed"].as_u64()),
        (Some(6), Some(3), Some(3))
    );
    assert_eq!(s["success_rate"].as_f64(), Some(0.5));
    assert_eq!(s["causes"]["proxy_reset"], 3, "{s}");
    for k in ["tcp", "http", "total"] {
        let p = &s["phases"][k];
        assert!(
            p["p50"].as_f64().unwrap() <= p["p95"].as_f64().unwrap(),
            "{k}: {p}"
        );
        assert!(
            p["p95"].as_f64().unwrap() <= p["p99"].as_f64().unwrap(),
            "{k}: {p}"
        );
    }
    assert_eq!(s["phases"]["http"]["n"], 3);
    assert_eq!(s["phases"]["total"]["n"], 6);
    let lines: Vec<&str> = d
        .human
        .lines()
        .filter(|l| l.trim_start().starts_with('#'))
        .collect();
    assert_eq!(lines.len(), 6, "{}", d.human);
    assert_eq!(
        lines.iter().filter(|l| l.contains("proxy_reset")).count(),
        3
    );
    assert!(d.human.contains("3/6 ok (50.0 % success)"), "{}", d.human);
    assert!(d.human.contains("p95"), "{}", d.human);
    // All good: exit 0.
    let d = doctor(&[
        "--timeout",
        "3s",
        "--proxy",
        &tiny.url(),
        "--repeat",
        "2",
        "--interval",
        "10ms",
        &small,
    ]);
    assert_eq!(d.code, 0, "{}", d.human);
    assert_eq!(d.json["summary"]["success_rate"].as_f64(), Some(1.0));
}

fn assert_cut_near_3s(d: &Doc, kinds: &[&str]) {
    println!("{}", d.human);
    assert_eq!(d.json["cause"], "idle_cut", "{}\n{}", d.json, d.human);
    assert_eq!(d.code, 1);
    let cut = d.json["idle_cut_s"].as_f64().expect("idle_cut_s");
    let survived = d.json["idle_survived_s"].as_f64().expect("idle_survived_s");
    // Ages step by 0.5 s: the cut lies between the last age that survived and
    // the first that did not; that bracket must be within ±1 s of 3 s
    // (tinyproxy's integer-second clock puts its cut anywhere in (3 s, 4 s]).
    assert!(
        (2.0..=4.0).contains(&survived),
        "survived {survived} s: {}",
        d.human
    );
    assert!((2.5..=4.6).contains(&cut), "cut at {cut} s: {}", d.human);
    assert!(
        cut > survived && cut - survived <= 1.1,
        "bracket {survived}..{cut} s"
    );
    assert!(
        kinds.iter().any(|k| d.json["cut_kind"] == *k),
        "cut_kind {} not one of {kinds:?}: {}",
        d.json["cut_kind"],
        d.human
    );
    assert!(d.human.contains("cause: idle_cut"), "{}", d.human);
    assert!(d.human.contains("IdleConnTimeout"), "{}", d.human);
    assert!(d.human.contains("✓ answered 200"), "timeline: {}", d.human);
}

/// `doctor --hold HOLD` through `proxy` to nginx's HTTPS `/small` (its
/// test CA trusted).
fn hold_to_nginx(nginx: &Nginx, proxy: &str, hold: &str) -> Doc {
    let ca = nginx.ca().ca_path();
    let url = format!("{}/small", nginx.https_url());
    doctor(&[
        "--timeout",
        "2s",
        "--cacert",
        ca.to_str().unwrap(),
        "--proxy",
        proxy,
        "--hold",
        hold,
        &url,
    ])
}

#[test]
fn hold_finds_tinyproxy_idle_timeout() {
    let nginx = Nginx::start();
    let tiny = TinyproxyWith::start("Timeout 3");
    let proxy = format!("http://{}", tiny.addr());
    let d = hold_to_nginx(&nginx, &proxy, "8s");
    // tinyproxy closes with a FIN. A probe written just as that FIN is on
    // its way is answered with a reset by tinyproxy's kernel, so the probe
    // at the cut sees FIN or RST (the socket cannot tell which came first);
    // never "silent".
    assert_cut_near_3s(&d, &["fin", "rst"]);
}

#[test]
fn hold_finds_a_silent_idle_drop() {
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let relay = Relay::idle_dropping(tiny.addr(), Duration::from_secs(3));
    let proxy = format!("http://{}", relay.addr);
    let d = hold_to_nginx(&nginx, &proxy, "8s");
    assert_cut_near_3s(&d, &["silent"]);
    // Without a cut on the path, every age survives (a short hold).
    let d = hold_to_nginx(&nginx, &tiny.url(), "2s");
    assert_eq!(d.code, 0, "{}", d.human);
    assert_eq!(
        d.json["idle_survived_s"].as_f64().map(|s| s >= 2.0),
        Some(true),
        "{}",
        d.json
    );
    assert!(d.json["idle_cut_s"].is_null());
}

#[test]
fn dns_comparison_against_dnsmasq() {
    let nginx = Nginx::start();
    let same = Dnsmasq::start(&[("app.test", "127.0.0.1")]);
    let other = Dnsmasq::start(&[("app.test", "127.0.0.2")]);
    let dir = temp_dir("docdns", false);
    let cfg = dir.path().join("pg.toml");
    // The config's static resolve entry stands in for the local resolver:
    // no lookup leaves the machine.
    std::fs::write(&cfg, "[resolve]\n\"app.test\" = \"127.0.0.1\"\n").unwrap();
    let cfg = cfg.to_str().unwrap();
    let url = format!("http://app.test:{}/small", nginx.port());
    // The doctor's lookup through the config, compared with `dns`'s answer.
    let ask = |dns: &Dnsmasq| {
        let server = dns.addr.to_string();
        doctor(&["--timeout", "3s", "--config", cfg, "--dns", &server, &url])
    };
    let d = ask(&same);
    assert_eq!(d.code, 0, "{}", d.human);
    let dns = step_detail(&d, "dns");
    assert!(
        dns.contains(&format!("{} agree (127.0.0.1)", same.addr)),
        "{dns}"
    );
    let d = ask(&other);
    let dns = step_detail(&d, "dns");
    assert!(
        dns.contains("127.0.0.2") && dns.contains("answers differ"),
        "{dns}"
    );
    let findings = d.json["findings"].to_string();
    assert!(findings.contains("answers differ"), "{findings}");
    assert!(d.human.contains("answers differ"), "{}", d.human);
}

#[test]
fn hold_on_a_proxy_without_keep_alive_says_so() {
    // tinyproxy closes a plain-HTTP client connection after each answer:
    // nothing idles, so there is no idle cut to report.
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let small = format!("{}/small", nginx.url());
    let d = doctor(&[
        "--timeout",
        "2s",
        "--proxy",
        &tiny.url(),
        "--hold",
        "2s",
        &small,
    ]);
    assert_eq!(d.code, 0, "{}", d.human);
    assert!(d.json["cause"].is_null(), "{}", d.json);
    assert!(
        d.json["summary"]
            .as_str()
            .unwrap()
            .contains("closes the connection after every answer"),
        "{}",
        d.json
    );
    assert!(d.json["idle_cut_s"].is_null());
}
