//! Human and JSON renderings of a doctor report.

use std::fmt::Write;

use super::{Report, Step};

/// Colours only on a terminal and when `NO_COLOR` is unset.
pub fn use_colour() -> bool {
    use std::io::IsTerminal;
    std::env::var_os("NO_COLOR").is_none() && std::io::stdout().is_terminal()
}

fn mark(ok: bool, colour: bool) -> &'static str {
    match (ok, colour) {
        (true, true) => "\x1b[32m✓\x1b[0m",
        (false, true) => "\x1b[31m✗\x1b[0m",
        (true, false) => "✓",
        (false, false) => "✗",
    }
}

fn steps(out: &mut String, steps: &[Step], colour: bool) {
    for s in steps {
        let _ = writeln!(
            out,
            "  {} {:<16} {:>9.1} ms  {}",
            mark(s.ok, colour),
            s.name,
            s.duration_ms,
            s.detail
        );
    }
}

pub fn human(r: &Report, colour: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "proxyguard doctor {}", r.url);
    let _ = writeln!(
        out,
        "  proxy: {} ({})",
        r.proxy.as_deref().unwrap_or("none (direct)"),
        r.proxy_source
    );
    let _ = writeln!(out);
    steps(&mut out, &r.steps, colour);
    let t = &r.timings;
    let f = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    let _ = writeln!(
        out,
        "\n  timings (ms, cumulative): namelookup {} connect {} proxy_handshake {} appconnect {} starttransfer {} total {:.1}",
        f(t.namelookup), f(t.connect), f(t.proxy_handshake), f(t.appconnect), f(t.starttransfer), t.total
    );
    if !r.findings.is_empty() {
        let _ = writeln!(out, "\n  findings:");
        for f in &r.findings {
            let _ = writeln!(out, "    ! {f}");
        }
    }
    if let Some(d) = &r.direct {
        let _ = writeln!(out, "\n  compare: direct (no proxy)");
        steps(&mut out, &d.steps, colour);
        let _ = writeln!(
            out,
            "  direct result: {}",
            if d.verdict.ok {
                "ok".to_string()
            } else {
                format!("{} — {}", d.verdict.cause.unwrap_or("-"), d.verdict.summary)
            }
        );
    }
    r.verdict.write_diagnosis(&mut out, mark(true, colour));
    out
}

pub fn json<R: serde::Serialize>(r: &R) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| {
        format!("{{\"ok\":false,\"cause\":null,\"summary\":\"cannot render: {e}\"}}")
    })
}
