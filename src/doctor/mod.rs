//! `proxyguard doctor`: walk the real proxy path with the same connectors
//! `serve` uses, time every phase, and name the root cause and the fix.
//!
//! Layout: `settings` (which proxy applies, URL normalisation), one module per
//! step of the walk (`dns`, `tcp`, `handshake`, `tls`, `http`), `walk` which
//! runs them in order, `interpret` which maps raw results to causes, `probe`
//! (what a port really speaks), and the modes `repeat` and `hold`.

pub mod cause;
pub mod cli;
mod dns;
mod handshake;
pub mod hold;
mod http;
pub mod interpret;
pub mod probe;
pub mod repeat;
pub mod report;
pub mod settings;
mod tcp;
mod tls;
pub mod tlsinfo;
mod walk;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use serde::Serialize;

use crate::config::env::ProxyEnv;
use crate::config::Config;
use crate::upstream::{Resolver, Target, UpstreamSpec};
pub use cause::Cause;
pub use settings::{normalize_url, windows_settings};

/// What to diagnose and how.
#[derive(Debug, Clone)]
pub struct Options {
    pub url: String,
    pub proxy: Option<String>,
    /// A configured upstream to test (takes precedence over `proxy`).
    pub upstream: Option<UpstreamSpec>,
    pub config: Option<Config>,
    pub dns: Option<SocketAddr>,
    pub compare_direct: bool,
    pub timeout: Duration,
    /// Extra trusted roots (PEM) for the target's TLS.
    pub ca_file: Option<std::path::PathBuf>,
    /// Extra trusted roots (PEM) for an `https://` proxy's own TLS.
    pub proxy_ca_file: Option<std::path::PathBuf>,
    pub env: ProxyEnv,
    /// Windows system proxy (read from the registry on Windows only).
    pub windows: Option<crate::config::windows::WindowsProxySettings>,
}

/// One step of the walk.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: &'static str,
    pub ok: bool,
    pub duration_ms: f64,
    pub detail: String,
}

/// Cumulative timings, named like curl's `-w` variables (milliseconds).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub namelookup: Option<f64>,
    pub connect: Option<f64>,
    pub proxy_handshake: Option<f64>,
    pub appconnect: Option<f64>,
    pub starttransfer: Option<f64>,
    pub total: f64,
}

/// The diagnosis every report starts with: whether the path works and, if
/// not, the cause (its code), why, and the fix.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verdict {
    pub ok: bool,
    pub cause: Option<&'static str>,
    pub summary: String,
    pub fix: String,
}

impl Verdict {
    pub fn ok(summary: String) -> Self {
        Verdict {
            ok: true,
            cause: None,
            summary,
            fix: String::new(),
        }
    }

    pub fn failed(cause: Cause, summary: String, fix: String) -> Self {
        Verdict {
            ok: false,
            cause: Some(cause.code()),
            summary,
            fix,
        }
    }

    /// The closing "Diagnosis" block of the human report.
    fn write_diagnosis(&self, out: &mut String, ok_mark: &str) {
        use std::fmt::Write;
        let _ = writeln!(out, "\nDiagnosis");
        match self.cause {
            None => {
                let _ = writeln!(out, "  {ok_mark} ok: {}", self.summary);
            }
            Some(c) => {
                let _ = writeln!(out, "  cause: {c}");
                let _ = writeln!(out, "  why:   {}", self.summary);
                let _ = writeln!(out, "  fix:   {}", self.fix);
            }
        }
    }
}

/// The result of walking one path (through the proxy, or direct).
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub via: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub status: Option<u16>,
    pub steps: Vec<Step>,
    pub timings: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<tlsinfo::CertSummary>,
    /// Findings of this walk (e.g. DNS answers that differ).
    #[serde(skip)]
    pub findings: Vec<String>,
}

/// The whole report (the JSON schema in docs/doctor.md).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub url: String,
    pub proxy: Option<String>,
    pub proxy_source: String,
    pub steps: Vec<Step>,
    pub timings: Timings,
    pub findings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<tlsinfo::CertSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direct: Option<PathReport>,
}

/// Usage-level errors (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
    #[error("bad proxy URL: {0}")]
    Proxy(String),
    #[error("cannot read CA file: {0}")]
    CaFile(String),
    #[error("{0}")]
    Other(String),
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

fn bracket(h: &str) -> String {
    if h.contains(':') && !h.starts_with('[') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

/// Extra trust anchors given on the command line, with where they came from.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    pub target: Vec<CertificateDer<'static>>,
    pub target_file: Option<String>,
    pub proxy: Vec<CertificateDer<'static>>,
    pub proxy_file: Option<String>,
}

impl Roots {
    fn load(opts: &Options) -> Result<Roots, DoctorError> {
        let read = |p: &Option<std::path::PathBuf>| -> Result<_, DoctorError> {
            match p {
                Some(p) => Ok((
                    crate::upstream::tls::load_pem_certs(p).map_err(DoctorError::CaFile)?,
                    Some(p.display().to_string()),
                )),
                None => Ok((Vec::new(), None)),
            }
        };
        let (target, target_file) = read(&opts.ca_file)?;
        let (proxy, proxy_file) = read(&opts.proxy_ca_file)?;
        Ok(Roots {
            target,
            target_file,
            proxy,
            proxy_file,
        })
    }
}

/// A parsed, validated request to diagnose: the pieces every mode shares.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: url::Url,
    pub target: Target,
    pub https: bool,
    pub proxy: Option<UpstreamSpec>,
    pub proxy_source: String,
    pub resolver: Resolver,
    pub roots: Roots,
    pub settings_step: Step,
}

impl Plan {
    /// Parses the URL (curl-like), chooses the proxy and loads the roots.
    pub fn new(opts: &Options) -> Result<Plan, DoctorError> {
        let url = normalize_url(&opts.url)?;
        let https = url.scheme() == "https";
        let host = url
            .host_str()
            .ok_or_else(|| DoctorError::Url(opts.url.clone(), "no host".into()))?;
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        let target = Target::parse_authority(&format!("{}:{port}", bracket(host)), None)
            .ok_or_else(|| DoctorError::Url(opts.url.clone(), "bad host".into()))?;
        let settings_start = Instant::now();
        let (proxy, proxy_source) = settings::choose_proxy(opts, &target, https)?;
        let settings_step = Step {
            name: "proxy_settings",
            ok: true,
            duration_ms: ms(settings_start.elapsed()),
            detail: match &proxy {
                Some(p) => format!("proxy {} from {proxy_source}", p.redacted_url()),
                None => format!("no proxy: {proxy_source}"),
            },
        };
        let resolver = opts
            .config
            .as_ref()
            .map(|c| Resolver::new(c.resolve.clone()))
            .unwrap_or_default();
        Ok(Plan {
            url,
            target,
            https,
            proxy,
            proxy_source,
            resolver,
            roots: Roots::load(opts)?,
            settings_step,
        })
    }
}

/// Runs the doctor once.
pub async fn run(opts: &Options) -> Result<Report, DoctorError> {
    let plan = Plan::new(opts)?;
    Ok(run_plan(opts, &plan).await)
}

/// Walks a prepared plan (used by `run` and by `--repeat`).
pub async fn run_plan(opts: &Options, plan: &Plan) -> Report {
    let mut findings: Vec<String> = opts.env.findings.iter().map(|f| f.message()).collect();
    if let Some(w) = &opts.windows {
        findings.extend(w.go_notes().iter().map(|s| s.to_string()));
        let scheme = if plan.https { "https" } else { "http" };
        let host = plan.target.host.bare();
        findings.extend(settings::windows_mismatch(
            &opts.env,
            w,
            scheme,
            &host,
            plan.target.port,
        ));
    }
    let main = walk::walk(plan, plan.proxy.as_ref(), opts).await;
    let direct = if opts.compare_direct && plan.proxy.is_some() {
        Some(walk::walk(plan, None, opts).await)
    } else {
        None
    };
    findings.extend(main.findings.iter().cloned());
    let mut steps = vec![plan.settings_step.clone()];
    steps.extend(main.steps.clone());
    Report {
        verdict: main.verdict.clone(),
        url: plan.url.to_string(),
        proxy: plan.proxy.as_ref().map(|p| p.redacted_url()),
        proxy_source: plan.proxy_source.clone(),
        steps,
        timings: main.timings.clone(),
        findings,
        certificate: main.certificate.clone(),
        direct,
    }
}
