//! `hey`, a Go net/http load generator: it takes the proxy with `-x` (so,
//! unlike Go's ProxyFromEnvironment, it also proxies loopback targets) and
//! reports status and error distributions and latency percentiles.

use std::process::Command;
use std::time::Duration;

use super::{run_cmd, PROXY_ENV_VARS};

#[derive(Debug, Default)]
pub struct Hey {
    pub ok: u64,
    pub other_status: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub raw: String,
}

/// Runs `hey` (a Go net/http load generator) through `proxy`.
pub fn hey(proxy: &str, url: &str, n: usize, c: usize, extra: &[&str]) -> Hey {
    let mut cmd = Command::new("hey");
    cmd.args([
        "-n",
        &n.to_string(),
        "-c",
        &c.to_string(),
        "-t",
        "20",
        "-x",
        proxy,
    ]);
    cmd.args(extra);
    cmd.arg(url);
    for v in PROXY_ENV_VARS {
        cmd.env_remove(v);
    }
    let out = run_cmd(cmd, Duration::from_secs(120));
    let raw = out.stdout.clone();
    let mut h = Hey {
        raw: raw.clone(),
        ..Default::default()
    };
    let mut section = "";
    for line in raw.lines() {
        let t = line.trim();
        if t.starts_with("Status code distribution") {
            section = "status";
            continue;
        }
        if t.starts_with("Error distribution") {
            section = "errors";
            continue;
        }
        if t.starts_with("50% in") {
            h.p50_ms = t
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                * 1000.0;
        }
        if t.starts_with("99% in") {
            h.p99_ms = t
                .split_whitespace()
                .nth(2)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                * 1000.0;
        }
        if let Some(rest) = t.strip_prefix('[') {
            let (code, rest) = rest.split_once(']').unwrap_or(("", ""));
            let count: u64 = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            match section {
                "status" if code == "200" => h.ok += count,
                "status" => h.other_status += count,
                "errors" => h.errors += code.parse::<u64>().unwrap_or(count),
                _ => {}
            }
        }
    }
    h
}

/// Prints one `MATRIX|row|fault|requests|failed|p99 ms|note` line of a
/// fault matrix (`scripts/chaos` collects them).
pub fn matrix_cell(row: &str, fault: &str, h: &Hey, note: &str) {
    println!(
        "MATRIX|{row}|{fault}|{}|{}|{:.1}|{note}",
        h.ok + h.other_status + h.errors,
        h.other_status + h.errors,
        h.p99_ms
    );
}

/// Asserts that all `n` requests got a 200 and none failed; on failure
/// prints hey's output and `logs()` (the gateway's, read only then).
pub fn assert_all_ok(h: &Hey, n: u64, what: &str, logs: impl FnOnce() -> String) {
    if h.ok == n && h.errors == 0 && h.other_status == 0 {
        return;
    }
    panic!("{what}: {h:?}\n{}\n{}", h.raw, logs());
}
