//! One walk of the path: the steps in order (dns+tcp, handshake, tls, http),
//! each recording itself; the first failure ends the walk with its cause.

use std::time::{Duration, Instant};

use super::{ms, tlsinfo, Cause, Options, PathReport, Plan, Step, Timings, Verdict};
use crate::upstream::{ConnectContext, Timeouts, UpstreamSpec};

/// Why a walk stopped.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub cause: Cause,
    pub summary: String,
    /// Overrides the cause's generic fix when the walk knows better.
    pub fix: Option<String>,
    pub status: Option<u16>,
}

impl Failure {
    pub fn new(cause: Cause, summary: impl Into<String>) -> Self {
        Failure {
            cause,
            summary: summary.into(),
            fix: None,
            status: None,
        }
    }

    pub fn with_fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }
}

/// What a successful walk fetched.
pub(super) struct Fetched {
    pub status: u16,
}

pub(super) use crate::http_client::Io;

/// The record of one walk in progress.
pub(super) struct Walk {
    pub steps: Vec<Step>,
    pub timings: Timings,
    pub started: Instant,
    pub cert: Option<tlsinfo::CertSummary>,
    pub findings: Vec<String>,
    pub timeout: Duration,
}

impl Walk {
    pub fn step(
        &mut self,
        name: &'static str,
        ok: bool,
        took: Duration,
        detail: impl Into<String>,
    ) {
        self.steps.push(Step {
            name,
            ok,
            duration_ms: ms(took),
            detail: detail.into(),
        });
    }

    /// Milliseconds since the walk started.
    pub fn at(&self) -> f64 {
        ms(self.started.elapsed())
    }

    fn finish(self, via: String, plan: &Plan, result: Result<Fetched, Failure>) -> PathReport {
        let mut timings = self.timings;
        timings.total = ms(self.started.elapsed());
        let (verdict, status) = match result {
            Ok(f) => (
                Verdict::ok(format!(
                    "{} fetched: {} in {:.1} ms.",
                    plan.url, f.status, timings.total
                )),
                Some(f.status),
            ),
            Err(f) => (
                Verdict::failed(
                    f.cause,
                    f.summary,
                    f.fix.unwrap_or_else(|| f.cause.fix().to_string()),
                ),
                f.status,
            ),
        };
        PathReport {
            via,
            verdict,
            status,
            steps: self.steps,
            timings,
            certificate: self.cert,
            findings: self.findings,
        }
    }
}

/// The connect context: per-phase deadlines and the roots for an https:// proxy.
pub(super) fn context(plan: &Plan, timeout: Duration) -> Result<ConnectContext, Failure> {
    let mut ctx = ConnectContext::new(
        plan.resolver.clone(),
        Timeouts {
            connect: timeout,
            handshake: timeout,
            tls: timeout,
            // Probes would keep a NAT's entry alive and hide the idle cut
            // `--hold` looks for: doctor sees the path as the app does.
            tcp_keepalive: None,
            ..Timeouts::default()
        },
    );
    if !plan.roots.proxy.is_empty() {
        ctx.tls = crate::upstream::tls::client_config(&plan.roots.proxy).map_err(|e| {
            Failure::new(
                Cause::TlsCertUntrusted,
                format!("the --proxy-cacert roots cannot be used: {e}"),
            )
        })?;
    }
    Ok(ctx)
}

/// Walks the path through `proxy` (or direct) once.
pub(super) async fn walk(plan: &Plan, proxy: Option<&UpstreamSpec>, opts: &Options) -> PathReport {
    let via = proxy
        .map(|p| p.redacted_url())
        .unwrap_or_else(|| "direct".into());
    let mut w = Walk {
        steps: Vec::new(),
        timings: Timings::default(),
        started: Instant::now(),
        cert: None,
        findings: Vec::new(),
        timeout: opts.timeout,
    };
    let result = steps(&mut w, plan, proxy, opts).await;
    w.finish(via, plan, result)
}

async fn steps(
    w: &mut Walk,
    plan: &Plan,
    proxy: Option<&UpstreamSpec>,
    opts: &Options,
) -> Result<Fetched, Failure> {
    let ctx = context(plan, opts.timeout)?;
    let dns_notes = super::dns::notes(w, plan, proxy, opts).await;
    let conn = super::tcp::connect(w, plan, proxy, &ctx, dns_notes).await?;
    let (conn, absolute_form) = super::handshake::run(w, plan, proxy, &ctx, conn).await?;
    let io: Box<dyn Io> = if plan.https {
        super::tls::run(w, plan, proxy.is_some(), Box::new(conn)).await?
    } else {
        Box::new(conn)
    };
    super::http::run(w, plan, proxy, absolute_form, io).await
}
