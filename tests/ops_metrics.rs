//! /metrics as Prometheus tooling sees it: `promtool check metrics` on a live
//! scrape, and a real Prometheus on loopback scraping the admin endpoint and
//! answering `proxyguard_upstream_up` for every upstream and backend.

mod support;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn config(
    listen: SocketAddr,
    admin: SocketAddr,
    tiny: &str,
    dead: SocketAddr,
    nginx: &str,
) -> String {
    format!(
        "bypass_loopback = false\n\n[[listen]]\naddr = \"{listen}\"\n\n[admin]\naddr = \"{admin}\"\n\n\
         [health]\ninterval = \"1s\"\ntimeout = \"1s\"\n\n\
         [[upstream]]\nname = \"good\"\nurl = \"{tiny}\"\n\n\
         [[upstream]]\nname = \"dead\"\nurl = \"http://{dead}\"\n\n\
         [[route]]\nlisten = \"{}\"\n\n[[route.backend]]\nurl = \"{nginx}\"\n",
        free_addr()
    )
}

fn scrape(admin: SocketAddr) -> String {
    let r = curl(&["-s", &format!("http://{admin}/metrics")]);
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

fn tool(name: &str) -> Option<String> {
    ["/usr/bin", "/usr/local/bin", "/bin"]
        .iter()
        .map(|d| format!("{d}/{name}"))
        .find(|p| std::path::Path::new(p).exists())
}

#[test]
fn every_family_has_help_and_type_and_every_upstream_a_series_from_start() {
    let tiny = Tinyproxy::start(TinyOpts::default());
    let nginx = Nginx::start();
    let (listen, admin, dead) = (free_addr(), free_addr(), free_addr());
    let pg = Proxyguard::start(&config(listen, admin, &tiny.url(), dead, &nginx.url()));
    assert!(wait_port(admin, Duration::from_secs(10)), "{}", pg.logs());
    // No traffic yet: the series must exist anyway.
    let m = scrape(admin);
    for needle in [
        "proxyguard_upstream_up{upstream=\"good\"}",
        "proxyguard_upstream_up{upstream=\"dead\"}",
        &format!("proxyguard_upstream_up{{upstream=\"{}\"}}", nginx.url()),
        "proxyguard_upstream_breaker_state{upstream=\"good\"} 0",
        "proxyguard_upstream_connect_seconds_count{upstream=\"good\"} 0",
        "proxyguard_retries_total 0",
    ] {
        assert!(m.contains(needle), "missing {needle} in\n{m}");
    }
    // Every family that has a TYPE line has a HELP line just before it.
    let lines: Vec<&str> = m.lines().collect();
    let mut families = 0;
    for (i, l) in lines.iter().enumerate() {
        if let Some(rest) = l.strip_prefix("# TYPE ") {
            families += 1;
            let name = rest.split(' ').next().unwrap_or("");
            assert!(
                i > 0 && lines[i - 1].starts_with(&format!("# HELP {name} ")),
                "no HELP for {name}:\n{m}"
            );
        }
    }
    assert!(families >= 8, "only {families} families:\n{m}");

    let Some(promtool) = tool("promtool") else {
        eprintln!("SKIPPED promtool check: promtool not installed (Debian package `prometheus`)");
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(m.as_bytes()).expect("feed promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.trim().is_empty(),
        "promtool check metrics: {:?}\n{text}\non\n{m}",
        out.status
    );
}

#[test]
fn real_prometheus_scrapes_upstream_up_of_every_upstream() {
    let Some(prom) = tool("prometheus") else {
        eprintln!("SKIPPED: prometheus not installed (Debian package `prometheus`)");
        return;
    };
    let tiny = Tinyproxy::start(TinyOpts::default());
    let nginx = Nginx::start();
    let (listen, admin, dead) = (free_addr(), free_addr(), free_addr());
    let pg = Proxyguard::start(&config(listen, admin, &tiny.url(), dead, &nginx.url()));
    assert!(wait_port(admin, Duration::from_secs(10)), "{}", pg.logs());

    let dir = temp_dir("prometheus", false);
    let web = free_addr();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: proxyguard\n    static_configs:\n      - targets: ['{admin}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let mut cmd = Command::new(prom);
    cmd.arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"));
    let mut p = Child::spawn("prometheus", cmd, dir.path());
    assert!(
        wait_until(Duration::from_secs(30), || wait_port(
            web,
            Duration::from_millis(200)
        ) || !p.alive()),
        "prometheus did not listen"
    );
    let expect = ["good".to_string(), "dead".to_string(), nginx.url()];
    let mut last = serde_json::Value::Null;
    let found = wait_until(Duration::from_secs(40), || {
        let r = curl(&[
            "-s",
            &format!("http://{web}/api/v1/query?query=proxyguard_upstream_up"),
        ]);
        last = serde_json::from_str(&r.body).unwrap_or_default();
        let got: Vec<String> = last["data"]["result"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s["metric"]["upstream"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        expect.iter().all(|e| got.contains(e))
    });
    assert!(found, "query answer: {last}\nprometheus log:\n{}", p.log());
    // The healthy upstream reads 1 in Prometheus.
    let good = last["data"]["result"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["metric"]["upstream"] == "good"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(good["value"][1], "1", "{last}");
    p.stop();
}
