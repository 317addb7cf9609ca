//! The admin API against real traffic and a real failure: /metrics, /status,
//! /healthz, the status page in headless Chromium, `proxyguard status`,
//! alerts to a real HTTP receiver and a real command, hot reload under load.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use support::*;

fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let r = curl(&["-s", &format!("http://{addr}{path}")]);
    (r.status, r.body)
}

fn status(admin: SocketAddr) -> serde_json::Value {
    serde_json::from_str(&get(admin, "/status").1).expect("status JSON")
}

fn upstream<'a>(st: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    st["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .expect(name)
}

fn config(listen: SocketAddr, admin: SocketAddr, ups: &[(&str, String)], extra: &str) -> String {
    let mut s = format!("bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\n\n[admin]\naddr = \"{admin}\"\ntoken = \"t0ken\"\n\n[health]\ninterval = \"300ms\"\ntimeout = \"1s\"\n\n");
    for (n, u) in ups {
        s.push_str(&format!(
            "[[upstream]]\nname = \"{n}\"\nurl = \"{u}\"\nmax_fails = 1\n\n"
        ));
    }
    s.push_str(extra);
    s
}

#[test]
fn admin_endpoints_alerts_status_cli_and_page() {
    let nginx = Nginx::start();
    let tiny = Tinyproxy::start(TinyOpts::default());
    let dead = free_addr();
    let rx = HttpSink::start();
    let dir = temp_dir("alerts", false);
    let cmd_out = dir.path().join("cmd.log");
    let listen = free_addr();
    let admin = free_addr();
    let extra = format!(
        "[[alert]]\non = [\"upstream_down\", \"upstream_up\", \"breaker_open\", \"all_down\"]\nwebhook = \"http://{}/hook\"\ncommand = \"echo \\\"$PROXYGUARD_EVENT $PROXYGUARD_UPSTREAM\\\" >> {}\"\ncooldown = \"1m\"\n",
        rx.addr,
        cmd_out.display()
    );
    let cfg = config(
        listen,
        admin,
        &[("good", tiny.url()), ("dead", format!("http://{dead}"))],
        &extra,
    );
    let pg = Proxyguard::start(&cfg);
    let proxy = format!("http://{listen}");
    for _ in 0..5 {
        let r = curl(&["-x", &proxy, &format!("{}/small", nginx.url())]);
        assert_eq!(r.status, 200, "{r:?}\n{}", pg.logs());
    }
    // /status: the dead one is out with its last error; the good one serves.
    assert!(wait_until(Duration::from_secs(5), || upstream(
        &status(admin),
        "dead"
    )["state"]
        != "healthy"));
    let st = status(admin);
    assert_eq!(upstream(&st, "good")["state"], "healthy", "{st}");
    assert!(upstream(&st, "good")["successes"].as_u64().unwrap() >= 1);
    assert!(upstream(&st, "good")["ewma_ms"].is_number());
    assert!(upstream(&st, "dead")["last_check"]["ok"] == false, "{st}");
    assert!(st["can_serve"] == true && st["version"].is_string() && st["uptime_s"].is_number());
    assert!(
        st["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "upstream_down" && e["upstream"] == "dead"),
        "{st}"
    );
    assert_eq!(get(admin, "/healthz").0, 200);
    // /metrics: Prometheus text with our families.
    let needles = [
        "proxyguard_requests_total{kind=\"http\",outcome=\"ok\"}",
        "proxyguard_upstream_connect_seconds_bucket{upstream=\"good\"",
        "proxyguard_health_checks_total{upstream=\"dead\",result=\"fail\"}",
        "proxyguard_upstream_up{upstream=\"dead\"} 0",
        "proxyguard_client_connections_total",
        "proxyguard_events_total{kind=\"upstream_down\"}",
    ];
    // Gauges are set just after the transition is visible in /status.
    let mut m = String::new();
    let all = wait_until(Duration::from_secs(5), || {
        let (code, body) = get(admin, "/metrics");
        m = body;
        code == 200 && needles.iter().all(|n| m.contains(n))
    });
    for needle in needles {
        assert!(all && m.contains(needle), "missing {needle} in\n{m}");
    }
    // Alerts: the webhook got JSON, the command ran with the event in its env.
    assert!(
        wait_until(Duration::from_secs(5), || rx
            .events()
            .iter()
            .any(|e| e["kind"] == "upstream_down" && e["upstream"] == "dead")),
        "{:?}",
        rx.events()
    );
    assert!(wait_until(Duration::from_secs(5), || {
        std::fs::read_to_string(&cmd_out)
            .unwrap_or_default()
            .contains("upstream_down dead")
    }));
    // Cooldown: the dead upstream keeps failing checks, but alerts once.
    std::thread::sleep(Duration::from_millis(1500));
    let n = rx
        .events()
        .iter()
        .filter(|e| e["kind"] == "upstream_down" && e["upstream"] == "dead")
        .count();
    assert_eq!(n, 1, "cooldown did not dedupe: {:?}", rx.events());
    // `proxyguard status` prints the table and exits 0 while serving.
    let out = proxyguard_run(
        &["status", "--admin", &format!("http://{admin}")],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("good")
            && out.stdout.contains("healthy")
            && out.stdout.contains("dead"),
        "{}",
        out.stdout
    );

    // The status page, rendered by a real browser.
    let shot = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let dom = chromium(&format!("http://{admin}/"), Some(&shot));
    assert!(
        dom.contains("data-upstream=\"good\"") && dom.contains("data-state=\"healthy\""),
        "{dom}"
    );
    assert!(dom.contains("data-upstream=\"dead\""), "{dom}");
    assert!(
        dom.contains("Recent events") && dom.contains("upstream_down"),
        "{dom}"
    );
    assert!(dom.contains("serving"), "{dom}");
    assert!(
        std::fs::metadata(&shot)
            .map(|m| m.len() > 10_000)
            .unwrap_or(false),
        "no screenshot"
    );

    // Now the good one dies too: nothing can serve.
    drop(tiny);
    let _ = curl(&["-x", &proxy, &format!("{}/small", nginx.url())]);
    assert!(
        wait_until(Duration::from_secs(5), || get(admin, "/healthz").0 == 503),
        "{}",
        pg.logs()
    );
    let out = proxyguard_run(
        &["status", "--admin", &format!("http://{admin}")],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        wait_until(Duration::from_secs(5), || rx
            .events()
            .iter()
            .any(|e| e["kind"] == "all_down")),
        "{:?}",
        rx.events()
    );
}

/// Renders a page in headless Chromium (in its own network namespace, so
/// its own lookups never leave the machine); returns the DOM after scripts ran.
fn chromium(url: &str, screenshot: Option<&std::path::Path>) -> String {
    if let Some(p) = screenshot {
        let shot = format!("--screenshot={}", p.display());
        let out = support::browser::chromium_run(url, &[&shot]);
        assert!(!out.timed_out, "chromium screenshot timed out: {out:?}");
    }
    support::browser::chromium_dom(url)
}

#[test]
fn hot_reload_under_load_keeps_health_and_loses_nothing() {
    let nginx = Nginx::start();
    let t1 = Tinyproxy::start(TinyOpts::default());
    let t2 = Tinyproxy::start(TinyOpts::default());
    let listen = free_addr();
    let admin = free_addr();
    let cfg1 = config(listen, admin, &[("a", t1.url())], "");
    let pg = Proxyguard::start(&cfg1);
    let proxy = format!("http://{listen}");
    for _ in 0..3 {
        assert_eq!(
            curl(&["-x", &proxy, &format!("{}/small", nginx.url())]).status,
            200
        );
    }
    let before = upstream(&status(admin), "a")["successes"].as_u64().unwrap();
    assert!(before >= 1);
    // A client loop runs while we reload twice (SIGHUP, then POST /reload).
    let (p, u) = (proxy.clone(), format!("{}/small", nginx.url()));
    let load = std::thread::spawn(move || {
        let mut cmd = Command::new("hey");
        cmd.args(["-n", "3000", "-c", "8", "-x", &p, &u]);
        run_cmd(cmd, Duration::from_secs(120))
    });
    std::thread::sleep(Duration::from_millis(300));
    let path = pg.config_path().unwrap().to_path_buf();
    std::fs::write(
        &path,
        config(
            listen,
            admin,
            &[("a", t1.url()), ("b", t2.url())],
            "[pool]\nstrategy = \"round_robin\"\n",
        ),
    )
    .unwrap();
    pg.child.signal(1); // SIGHUP
    assert!(wait_until(Duration::from_secs(5), || status(admin)
        ["upstreams"]
        .as_array()
        .unwrap()
        .len()
        == 2));
    // Unchanged upstream kept its counters.
    assert!(upstream(&status(admin), "a")["successes"].as_u64().unwrap() >= before);
    // An invalid config is rejected and the old one kept.
    std::fs::write(&path, "[[listen]]\naddr = \"nonsense\"\n").unwrap();
    let r = curl(&[
        "-s",
        "-X",
        "POST",
        "-H",
        "Authorization: Bearer t0ken",
        &format!("http://{admin}/reload"),
    ]);
    assert_eq!(r.status, 422, "{r:?}");
    assert!(r.body.contains("listen.addr"), "{r:?}");
    let r = curl(&["-s", "-X", "POST", &format!("http://{admin}/reload")]);
    assert_eq!(r.status, 401, "reload needs the token");
    assert_eq!(status(admin)["upstreams"].as_array().unwrap().len(), 2);
    let out = load.join().unwrap();
    assert!(
        out.stdout.contains("[200]\t3000 responses"),
        "requests lost during reload:\n{}",
        out.stdout
    );
    assert!(!out.stdout.contains("Error distribution"), "{}", out.stdout);
    let st = status(admin);
    assert!(
        upstream(&st, "b")["successes"].as_u64().unwrap() > 0,
        "new upstream took traffic: {st}"
    );
    assert!(st["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "config_reload_failed"));
    let m = get(admin, "/metrics").1;
    assert!(
        m.contains("proxyguard_config_reloads_total{result=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("proxyguard_config_reloads_total{result=\"error\"} 1"),
        "{m}"
    );
}
