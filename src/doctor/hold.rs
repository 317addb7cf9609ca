//! `--hold DURATION`: find the idle cut behind "the connection suddenly
//! drops". Several connections through the path are opened at once, each used
//! for one request and then left idle; one is probed at each of a rising set
//! of idle ages. A probe must get its answer; the first age that does not is
//! the cut, and how it failed (RST, FIN, or silence) is its kind.

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::time::Instant;

use super::walk::{context, Io};
use super::{run_plan, Cause, DoctorError, Options, Plan, Verdict};
use crate::upstream::{NoopObserver, UpstreamSpec};

/// How an idle connection was cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CutKind {
    /// Reset (RST): the peer or a middlebox refused the connection.
    Rst,
    /// Closed (FIN): the peer closed it cleanly.
    Fin,
    /// Silently: the request was written and nothing ever came back.
    Silent,
}

impl CutKind {
    fn describe(self) -> &'static str {
        match self {
            CutKind::Rst => "reset (RST)",
            CutKind::Fin => "closed by the peer (FIN)",
            CutKind::Silent => "silently dropped: the request went out, no answer ever came",
        }
    }
}

/// One probe of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// Idle age when probed (seconds, measured).
    pub age_s: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cut_kind: Option<CutKind>,
    pub outcome: String,
}

/// The `--hold` report.
#[derive(Debug, Clone, Serialize)]
pub struct HoldReport {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub url: String,
    pub proxy: Option<String>,
    pub hold_s: f64,
    pub idle_survived_s: Option<f64>,
    pub idle_cut_s: Option<f64>,
    pub cut_kind: Option<CutKind>,
    pub probes: Vec<Probe>,
}

/// The idle ages probed up to `hold`: every half second for holds up to
/// 10 s, every second up to 20 s, else a ladder of common idle timeouts
/// (5 s … 1 h) capped by `hold`.
pub fn schedule(hold: Duration) -> Vec<Duration> {
    let ms = hold.as_millis().max(1000) as u64;
    let step = match ms {
        0..=10_000 => 500,
        10_001..=20_000 => 1000,
        _ => 0,
    };
    let mut ages: Vec<u64> = if step > 0 {
        (0..)
            .map(|i| 1000 + i * step)
            .take_while(|a| *a <= ms)
            .collect()
    } else {
        [5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600]
            .into_iter()
            .map(|a| a * 1000)
            .filter(|a| *a < ms)
            .chain(std::iter::once(ms))
            .collect()
    };
    ages.dedup();
    ages.into_iter().map(Duration::from_millis).collect()
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One idle connection: the request sender and how its connection ended.
struct Held {
    tx: Sender,
    ended: Arc<Mutex<Option<Result<(), hyper::Error>>>>,
    last_used: Instant,
    absolute_form: bool,
    proxy_auth: Option<String>,
    /// The answer said the connection ends after it (`Connection: close`).
    closes: bool,
}

/// Runs the hold: a normal walk first (the path must work), then the probes.
pub async fn run(opts: &Options, hold: Duration) -> Result<HoldReport, DoctorError> {
    let plan = Plan::new(opts)?;
    let first = run_plan(opts, &plan).await;
    let mut report = HoldReport {
        verdict: first.verdict.clone(),
        url: plan.url.to_string(),
        proxy: plan.proxy.as_ref().map(|p| p.redacted_url()),
        hold_s: hold.as_secs_f64(),
        idle_survived_s: None,
        idle_cut_s: None,
        cut_kind: None,
        probes: Vec::new(),
    };
    if !first.verdict.ok {
        return Ok(report);
    }
    let ages = schedule(hold);
    let opened = futures_util::future::join_all(ages.iter().map(|_| open(&plan, opts))).await;
    let mut held = Vec::new();
    for h in opened {
        match h {
            Ok(h) => held.push(h),
            Err(e) => {
                report.verdict = Verdict::failed(
                    Cause::ProxyReset,
                    format!("Could not open the idle connections: {e}."),
                    Cause::ProxyReset.fix().to_string(),
                );
                return Ok(report);
            }
        }
    }
    if held.iter().all(|h| h.closes) {
        report.verdict.summary = format!(
            "{} closes the connection after every answer: there is no idle connection to cut; clients open a new one per request. Try an https:// URL to hold CONNECT tunnels.",
            if plan.proxy.is_some() { "The proxy" } else { "The server" }
        );
        return Ok(report);
    }
    let wait = opts.timeout.min(Duration::from_secs(5));
    let mut cuts_in_a_row = 0;
    for (h, age) in held.iter_mut().zip(ages) {
        tokio::time::sleep_until(h.last_used + age).await;
        let p = probe(h, &plan, wait).await;
        cuts_in_a_row = if p.ok { 0 } else { cuts_in_a_row + 1 };
        report.probes.push(p);
        if cuts_in_a_row >= 2 {
            break; // the cut is confirmed; older ages would only repeat it
        }
    }
    conclude(&mut report);
    Ok(report)
}

/// Opens one connection and uses it for one request.
async fn open(plan: &Plan, opts: &Options) -> Result<Held, String> {
    let ctx = context(plan, opts.timeout).map_err(|f| f.summary)?;
    let direct = UpstreamSpec::direct("direct");
    let up = plan.proxy.as_ref().unwrap_or(&direct);
    let mut obs = NoopObserver;
    let (io, absolute_form, proxy_auth): (Box<dyn Io>, bool, Option<String>) = if plan.https {
        let conn = up
            .connect_tunnel(&plan.target, &ctx, &mut obs)
            .await
            .map_err(|e| e.to_string())?;
        let tls = crate::upstream::tls::client_config(&plan.roots.target)?;
        let name = rustls_pki_types::ServerName::try_from(plan.target.host.bare())
            .map_err(|e| e.to_string())?;
        let s = tokio::time::timeout(
            opts.timeout,
            tokio_rustls::TlsConnector::from(tls).connect(name, conn),
        )
        .await
        .map_err(|_| "TLS timed out".to_string())?
        .map_err(|e| e.to_string())?;
        (Box::new(s), false, None)
    } else {
        let c = up
            .connect_for_http(&plan.target, &ctx, &mut obs)
            .await
            .map_err(|e| e.to_string())?;
        (Box::new(c.conn), c.absolute_form, c.proxy_authorization)
    };
    let (tx, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    let ended = Arc::new(Mutex::new(None));
    let e2 = ended.clone();
    tokio::spawn(async move {
        let r = conn.await;
        if let Ok(mut e) = e2.lock() {
            *e = Some(r);
        }
    });
    let mut h = Held {
        tx,
        ended,
        last_used: Instant::now(),
        absolute_form,
        proxy_auth,
        closes: false,
    };
    tokio::time::timeout(opts.timeout, request(&mut h, plan))
        .await
        .map_err(|_| "no answer to the first request".to_string())??;
    h.last_used = Instant::now();
    // A peer that closes right after its answer keeps nothing alive (tinyproxy
    // does so for plain HTTP even without `Connection: close`).
    for _ in 0..10 {
        if h.closes || h.ended.lock().map(|e| e.is_some()).unwrap_or(false) {
            h.closes = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(h)
}

/// Sends one GET and reads the whole answer.
async fn request(h: &mut Held, plan: &Plan) -> Result<u16, String> {
    let req = super::http::get_request(plan, h.absolute_form, h.proxy_auth.as_deref())?;
    h.tx.ready().await.map_err(|e| e.to_string())?;
    let resp = h.tx.send_request(req).await.map_err(|e| kind_text(&e))?;
    let status = resp.status().as_u16();
    h.closes = resp.version() == http::Version::HTTP_10
        || resp
            .headers()
            .get_all(http::header::CONNECTION)
            .iter()
            .any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("close"))
            });
    resp.into_body()
        .collect()
        .await
        .map_err(|e| kind_text(&e))?;
    Ok(status)
}

/// "rst:…" or "fin:…" from a hyper error, by the I/O error under it.
fn kind_text(e: &hyper::Error) -> String {
    match cut_kind_of(e) {
        CutKind::Rst => format!("rst:{e}"),
        _ => format!("fin:{e}"),
    }
}

fn cut_kind_of(e: &hyper::Error) -> CutKind {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return match io.kind() {
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => CutKind::Rst,
                _ => CutKind::Fin,
            };
        }
        src = s.source();
    }
    CutKind::Fin
}

/// Probes one held connection at its age.
async fn probe(h: &mut Held, plan: &Plan, wait: Duration) -> Probe {
    let age_s = (h.last_used.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    let ended = h.ended.lock().ok().and_then(|mut e| e.take());
    if let Some(r) = ended {
        let kind = match r {
            Ok(()) => CutKind::Fin,
            Err(e) => cut_kind_of(&e),
        };
        return cut(age_s, kind, "closed while idle");
    }
    match tokio::time::timeout(wait, request(h, plan)).await {
        Err(_) => cut(
            age_s,
            CutKind::Silent,
            &format!("no answer within {wait:?}"),
        ),
        Ok(Ok(status)) => Probe {
            age_s,
            ok: true,
            cut_kind: None,
            outcome: format!("answered {status}"),
        },
        Ok(Err(e)) => {
            let kind = if e.starts_with("rst:") {
                CutKind::Rst
            } else {
                CutKind::Fin
            };
            cut(age_s, kind, e.get(4..).unwrap_or(&e))
        }
    }
}

fn cut(age_s: f64, kind: CutKind, how: &str) -> Probe {
    Probe {
        age_s,
        ok: false,
        cut_kind: Some(kind),
        outcome: format!("cut: {} ({how})", kind.describe()),
    }
}

/// Fills the verdict from the probes.
fn conclude(r: &mut HoldReport) {
    r.idle_survived_s = r
        .probes
        .iter()
        .filter(|p| p.ok)
        .map(|p| p.age_s)
        .reduce(f64::max);
    let first_cut = r.probes.iter().find(|p| !p.ok).cloned();
    match first_cut {
        None => {
            r.verdict = Verdict::ok(format!(
                "Idle connections survived every age probed (up to {:.0} s).",
                r.idle_survived_s.unwrap_or(0.0)
            ));
        }
        Some(c) => {
            let kind = c.cut_kind.unwrap_or(CutKind::Silent);
            r.idle_cut_s = Some(c.age_s);
            r.cut_kind = Some(kind);
            let survived = r
                .idle_survived_s
                .map(|s| format!("survived {s:.1} s idle but "))
                .unwrap_or_default();
            let summary = format!(
                "A connection on this path {survived}was cut after {:.1} s idle: {}.",
                c.age_s,
                kind.describe()
            );
            let below = (r.idle_survived_s.unwrap_or(c.age_s / 2.0))
                .max(1.0)
                .floor();
            let fix = format!(
                "{} Here: IdleConnTimeout ≤ {below:.0}s (e.g. `&http.Transport{{IdleConnTimeout: {below:.0} * time.Second}}`).",
                Cause::IdleCut.fix()
            );
            r.verdict = Verdict::failed(Cause::IdleCut, summary, fix);
        }
    }
}

/// The human timeline and verdict.
pub fn human(r: &HoldReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "proxyguard doctor --hold {:.0}s {}", r.hold_s, r.url);
    let _ = writeln!(
        out,
        "  proxy: {}",
        r.proxy.as_deref().unwrap_or("none (direct)")
    );
    if !r.probes.is_empty() {
        let _ = writeln!(out, "\n  {:>8}  result", "idle");
        for p in &r.probes {
            let _ = writeln!(
                out,
                "  {:>6.1} s  {} {}",
                p.age_s,
                if p.ok { "✓" } else { "✗" },
                p.outcome
            );
        }
    }
    r.verdict.write_diagnosis(&mut out, "✓");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_dense_for_short_holds_and_a_ladder_for_long_ones() {
        let s = |d: u64| -> Vec<f64> {
            schedule(Duration::from_secs(d))
                .iter()
                .map(|a| a.as_secs_f64())
                .collect()
        };
        assert_eq!(s(3), vec![1.0, 1.5, 2.0, 2.5, 3.0]);
        assert_eq!(s(0), vec![1.0]);
        assert_eq!(s(12).len(), 12);
        assert_eq!(s(600), vec![5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]);
        assert_eq!(s(100), vec![5.0, 15.0, 30.0, 60.0, 100.0]);
    }

    #[test]
    fn verdict_names_the_first_cut_and_the_last_survivor() {
        let mut r = HoldReport {
            verdict: Verdict::ok(String::new()),
            url: String::new(),
            proxy: None,
            hold_s: 8.0,
            idle_survived_s: None,
            idle_cut_s: None,
            cut_kind: None,
            probes: vec![
                Probe {
                    age_s: 1.0,
                    ok: true,
                    cut_kind: None,
                    outcome: String::new(),
                },
                Probe {
                    age_s: 2.0,
                    ok: true,
                    cut_kind: None,
                    outcome: String::new(),
                },
                cut(3.0, CutKind::Silent, "x"),
                cut(4.0, CutKind::Silent, "x"),
            ],
        };
        conclude(&mut r);
        assert_eq!(r.verdict.cause, Some("idle_cut"));
        assert_eq!((r.idle_survived_s, r.idle_cut_s), (Some(2.0), Some(3.0)));
        assert_eq!(r.cut_kind, Some(CutKind::Silent));
        assert!(
            r.verdict.fix.contains("IdleConnTimeout ≤ 2s"),
            "{}",
            r.verdict.fix
        );
    }
}
