//! `--repeat N [--interval D]`: walk the path N times to catch intermittent
//! faults; one line per run and a summary (success rate, causes with counts,
//! p50/p95/p99 of each phase).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use super::{run_plan, DoctorError, Options, Plan, Report};

/// One run, as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RunLine {
    pub n: usize,
    /// Wall-clock start (RFC 3339, UTC).
    pub at: String,
    pub ok: bool,
    pub cause: Option<&'static str>,
    pub summary: String,
    pub total_ms: f64,
    /// Duration of each step that completed (ms).
    pub phases: BTreeMap<&'static str, f64>,
}

/// Percentiles of one phase over the runs where it completed.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// The summary of all runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub runs: usize,
    pub ok: usize,
    pub failed: usize,
    /// ok / runs, 0..1.
    pub success_rate: f64,
    pub causes: BTreeMap<&'static str, usize>,
    pub phases: BTreeMap<&'static str, Percentiles>,
}

/// The `--repeat` report (`--json` prints this).
#[derive(Debug, Clone, Serialize)]
pub struct RepeatReport {
    pub ok: bool,
    pub url: String,
    pub proxy: Option<String>,
    pub proxy_source: String,
    pub runs: Vec<RunLine>,
    pub summary: Summary,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn line(n: usize, at: String, r: &Report) -> RunLine {
    let mut phases: BTreeMap<&'static str, f64> = r
        .steps
        .iter()
        .filter(|s| s.ok)
        .map(|s| (s.name, s.duration_ms))
        .collect();
    phases.insert("total", r.timings.total);
    RunLine {
        n,
        at,
        ok: r.verdict.ok,
        cause: r.verdict.cause,
        summary: r.verdict.summary.clone(),
        total_ms: r.timings.total,
        phases,
    }
}

/// Summarises runs.
pub fn summarise(runs: &[RunLine]) -> Summary {
    let ok = runs.iter().filter(|r| r.ok).count();
    let mut causes = BTreeMap::new();
    for c in runs.iter().filter_map(|r| r.cause) {
        *causes.entry(c).or_insert(0) += 1;
    }
    let mut values: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for r in runs {
        for (k, v) in &r.phases {
            values.entry(*k).or_default().push(*v);
        }
    }
    let phases = values
        .into_iter()
        .map(|(k, mut v)| {
            v.sort_by(|a, b| a.total_cmp(b));
            let p = Percentiles {
                n: v.len(),
                p50: percentile(&v, 50.0),
                p95: percentile(&v, 95.0),
                p99: percentile(&v, 99.0),
            };
            (k, p)
        })
        .collect();
    Summary {
        runs: runs.len(),
        ok,
        failed: runs.len() - ok,
        success_rate: if runs.is_empty() {
            0.0
        } else {
            ok as f64 / runs.len() as f64
        },
        causes,
        phases,
    }
}

/// Walks the path `n` times, `interval` apart; `each` sees every run as it ends.
pub async fn run(
    opts: &Options,
    n: usize,
    interval: Duration,
    mut each: impl FnMut(&RunLine),
) -> Result<RepeatReport, DoctorError> {
    let plan = Plan::new(opts)?;
    let mut runs = Vec::with_capacity(n);
    let mut next = tokio::time::Instant::now();
    for i in 1..=n {
        tokio::time::sleep_until(next).await;
        next += interval;
        let at = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        let r = run_plan(opts, &plan).await;
        let l = line(i, at, &r);
        each(&l);
        runs.push(l);
    }
    let summary = summarise(&runs);
    Ok(RepeatReport {
        ok: summary.failed == 0,
        url: plan.url.to_string(),
        proxy: plan.proxy.as_ref().map(|p| p.redacted_url()),
        proxy_source: plan.proxy_source.clone(),
        runs,
        summary,
    })
}

/// The human line of one run.
pub fn human_line(l: &RunLine) -> String {
    let time = l.at.get(11..23).unwrap_or(&l.at);
    match l.cause {
        None => format!("  #{:<4} {time}  ok {:>26.1} ms", l.n, l.total_ms),
        Some(c) => format!(
            "  #{:<4} {time}  ✗ {c:<24} {:>9.1} ms  {}",
            l.n, l.total_ms, l.summary
        ),
    }
}

/// The human summary.
pub fn human_summary(r: &RepeatReport) -> String {
    let s = &r.summary;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nSummary: {}/{} ok ({:.1} % success), {} failed",
        s.ok,
        s.runs,
        s.success_rate * 100.0,
        s.failed
    );
    if !s.causes.is_empty() {
        let _ = writeln!(out, "  causes:");
        for (c, k) in &s.causes {
            let _ = writeln!(out, "    {c:<26} {k}");
        }
    }
    let _ = writeln!(
        out,
        "  {:<18} {:>5} {:>10} {:>10} {:>10}",
        "phase (ms)", "n", "p50", "p95", "p99"
    );
    for (k, p) in &s.phases {
        let _ = writeln!(
            out,
            "  {:<18} {:>5} {:>10.1} {:>10.1} {:>10.1}",
            k, p.n, p.p50, p.p95, p.p99
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_line(n: usize, ok: bool, total: f64) -> RunLine {
        let mut phases = BTreeMap::new();
        phases.insert("total", total);
        if ok {
            phases.insert("tcp", total / 2.0);
        }
        RunLine {
            n,
            at: String::new(),
            ok,
            cause: (!ok).then_some("proxy_reset"),
            summary: String::new(),
            total_ms: total,
            phases,
        }
    }

    #[test]
    fn summary_counts_causes_and_nearest_rank_percentiles() {
        let runs: Vec<_> = (1..=10)
            .map(|i| run_line(i, i % 5 != 0, i as f64))
            .collect();
        let s = summarise(&runs);
        assert_eq!((s.runs, s.ok, s.failed), (10, 8, 2));
        assert!((s.success_rate - 0.8).abs() < 1e-9);
        assert_eq!(s.causes.get("proxy_reset"), Some(&2));
        let t = &s.phases["total"];
        assert_eq!((t.n, t.p50, t.p95, t.p99), (10, 5.0, 10.0, 10.0));
        assert_eq!(s.phases["tcp"].n, 8);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }
}
