//! `proxyguard doctor`: walk the real proxy path with the same connectors
//! `serve` uses, time every phase, and name the root cause and the fix.

pub mod cause;
pub mod cli;
pub mod report;
pub mod tlsinfo;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::env::ProxyEnv;
use crate::config::Config;
use crate::upstream::{
    http_connect, socks5, tcp_connect, ConnectContext, ConnectError, Host, Phase, PhaseObserver,
    Resolver, Scheme, Target, Timeouts, UpstreamSpec,
};
pub use cause::Cause;

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

/// The result of walking one path (through the proxy, or direct).
#[derive(Debug, Clone, Serialize)]
pub struct PathReport {
    pub via: String,
    pub ok: bool,
    pub cause: Option<&'static str>,
    pub summary: String,
    pub fix: String,
    pub status: Option<u16>,
    pub steps: Vec<Step>,
    pub timings: Timings,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate: Option<tlsinfo::CertSummary>,
}

/// The whole report (the JSON schema in docs/doctor.md).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub cause: Option<&'static str>,
    pub summary: String,
    pub fix: String,
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
    #[error("{0}")]
    Other(String),
}

struct Recorder {
    started: Instant,
    marks: Vec<(Phase, Duration, f64, String)>,
}

impl PhaseObserver for Recorder {
    fn phase(&mut self, phase: Phase, took: Duration, detail: &str) {
        let at = ms(self.started.elapsed());
        self.marks.push((phase, took, at, detail.to_string()));
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 100.0).round() / 100.0
}

/// Which proxy applies to the URL, and why.
fn choose_proxy(
    opts: &Options,
    target: &Target,
    https: bool,
) -> Result<(Option<UpstreamSpec>, String), DoctorError> {
    let scheme = if https { "https" } else { "http" };
    if let Some(u) = &opts.upstream {
        return Ok((
            (!u.is_direct()).then(|| u.clone()),
            format!("upstream {:?}", u.name),
        ));
    }
    if let Some(p) = &opts.proxy {
        let spec =
            UpstreamSpec::parse("--proxy", p).map_err(|e| DoctorError::Proxy(e.to_string()))?;
        return Ok(((!spec.is_direct()).then_some(spec), "--proxy flag".into()));
    }
    if let Some(cfg) = &opts.config {
        if cfg.no_proxy.bypass(&target.host.bare(), target.port) {
            return Ok((
                None,
                format!("{}: no_proxy matches {}", cfg.source_name, target.host),
            ));
        }
        let up = cfg
            .upstreams
            .iter()
            .filter(|u| {
                if https {
                    u.applies.tunnel
                } else {
                    u.applies.plain
                }
            })
            .min_by_key(|u| u.priority);
        return Ok(match up {
            Some(u) if !u.spec.is_direct() => (
                Some(u.spec.clone()),
                format!("{}: upstream {:?}", cfg.source_name, u.spec.name),
            ),
            _ => (None, format!("{}: no upstream: direct", cfg.source_name)),
        });
    }
    match opts.env.proxy_for(scheme, &target.host.bare(), target.port) {
        Some(p) => {
            let spec = UpstreamSpec::parse(p.var, &p.url)
                .map_err(|e| DoctorError::Proxy(format!("{}: {e}", p.var)))?;
            Ok((
                Some(spec),
                format!(
                    "environment variable {} (as a Go program would use it)",
                    p.var
                ),
            ))
        }
        None => {
            let why = if target.host.bare() == "localhost"
                || matches!(&target.host, Host::Ip(ip) if ip.is_loopback())
            {
                "loopback targets are never proxied (Go semantics): direct".to_string()
            } else if !opts.env.no_proxy_raw.is_empty()
                && opts.env.no_proxy.bypass(&target.host.bare(), target.port)
            {
                format!(
                    "NO_PROXY ({}) matches {}: direct",
                    opts.env.no_proxy_raw, target.host
                )
            } else {
                format!("no {}_PROXY set: direct", scheme.to_ascii_uppercase())
            };
            Ok((None, why))
        }
    }
}

/// Reads the Windows system proxy (Go ignores it; doctor reports it).
pub fn windows_settings() -> Option<crate::config::windows::WindowsProxySettings> {
    #[cfg(windows)]
    {
        crate::config::windows::read_registry()
            .ok()
            .map(|raw| crate::config::windows::WindowsProxySettings::from_raw(&raw))
    }
    #[cfg(not(windows))]
    {
        None
    }
}

/// Runs the doctor.
pub async fn run(opts: &Options) -> Result<Report, DoctorError> {
    let url = url::Url::parse(&opts.url)
        .map_err(|e| DoctorError::Url(opts.url.clone(), e.to_string()))?;
    let https = match url.scheme() {
        "https" => true,
        "http" => false,
        s => {
            return Err(DoctorError::Url(
                opts.url.clone(),
                format!("unsupported scheme {s}"),
            ))
        }
    };
    let host = url
        .host_str()
        .ok_or_else(|| DoctorError::Url(opts.url.clone(), "no host".into()))?;
    let port = url
        .port_or_known_default()
        .unwrap_or(if https { 443 } else { 80 });
    let target = Target::parse_authority(&format!("{}:{port}", bracket(host)), None)
        .ok_or_else(|| DoctorError::Url(opts.url.clone(), "bad host".into()))?;
    let settings_start = Instant::now();
    let (proxy, source) = choose_proxy(opts, &target, https)?;
    let mut findings: Vec<String> = opts.env.findings.iter().map(|f| f.message()).collect();
    if let Some(w) = &opts.windows {
        findings.extend(w.go_notes().iter().map(|s| s.to_string()));
    }
    let settings = Step {
        name: "proxy_settings",
        ok: true,
        duration_ms: ms(settings_start.elapsed()),
        detail: match &proxy {
            Some(p) => format!("proxy {} from {source}", p.redacted_url()),
            None => format!("no proxy: {source}"),
        },
    };
    let resolve = opts
        .config
        .as_ref()
        .map(|c| Resolver::new(c.resolve.clone()))
        .unwrap_or_default();
    let ca = match &opts.ca_file {
        Some(p) => crate::upstream::tls::load_pem_certs(p).map_err(DoctorError::Other)?,
        None => Vec::new(),
    };
    let main = walk(
        &url,
        &target,
        https,
        proxy.as_ref(),
        resolve.clone(),
        opts,
        &ca,
    )
    .await;
    let direct = if opts.compare_direct && proxy.is_some() {
        Some(walk(&url, &target, https, None, resolve, opts, &ca).await)
    } else {
        None
    };
    let mut steps = vec![settings];
    steps.extend(main.steps.clone());
    Ok(Report {
        ok: main.ok,
        cause: main.cause,
        summary: main.summary.clone(),
        fix: main.fix.clone(),
        url: opts.url.clone(),
        proxy: proxy.as_ref().map(|p| p.redacted_url()),
        proxy_source: source,
        steps,
        timings: main.timings.clone(),
        findings,
        certificate: main.certificate.clone(),
        direct,
    })
}

fn bracket(h: &str) -> String {
    if h.contains(':') && !h.starts_with('[') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

struct Walk {
    steps: Vec<Step>,
    timings: Timings,
    started: Instant,
    cert: Option<tlsinfo::CertSummary>,
}

impl Walk {
    fn step(&mut self, name: &'static str, ok: bool, took: Duration, detail: impl Into<String>) {
        self.steps.push(Step {
            name,
            ok,
            duration_ms: ms(took),
            detail: detail.into(),
        });
    }

    fn fail(self, via: String, cause: Cause, summary: String) -> PathReport {
        let mut timings = self.timings;
        timings.total = ms(self.started.elapsed());
        PathReport {
            via,
            ok: false,
            cause: Some(cause.code()),
            summary,
            fix: cause.fix().to_string(),
            status: None,
            steps: self.steps,
            timings,
            certificate: self.cert,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn walk(
    url: &url::Url,
    target: &Target,
    https: bool,
    proxy: Option<&UpstreamSpec>,
    resolver: Resolver,
    opts: &Options,
    ca: &[CertificateDer<'static>],
) -> PathReport {
    let t = opts.timeout;
    let ctx = ConnectContext::new(
        resolver.clone(),
        Timeouts {
            connect: t,
            handshake: t,
            tls: t,
        },
    );
    let via = proxy
        .map(|p| p.redacted_url())
        .unwrap_or_else(|| "direct".into());
    let started = Instant::now();
    let mut w = Walk {
        steps: Vec::new(),
        timings: Timings::default(),
        started,
        cert: None,
    };
    let mut rec = Recorder {
        started,
        marks: Vec::new(),
    };

    // DNS of the target: who resolves it?
    let remote_dns = matches!(
        proxy.map(|p| p.scheme),
        Some(Scheme::Http | Scheme::Https | Scheme::Socks5h)
    );
    let mut dns_detail = Vec::new();
    if let Host::Name(name) = &target.host {
        if remote_dns {
            dns_detail.push(format!(
                "target {name} is resolved by the proxy (remote DNS)"
            ));
        }
        if let Some(server) = opts.dns {
            dns_detail.push(compare_dns(name, target.port, server, &resolver, t).await);
        }
    }

    // TCP (and TLS to an https:// proxy): the same connector serve uses.
    let connected = match proxy {
        Some(p) => p.connect_proxy(&ctx, &mut rec).await,
        None => tcp_connect(&ctx, &target.host, target.port, false, &mut rec)
            .await
            .map(crate::upstream::Conn::tcp),
    };
    let dns_took = rec
        .marks
        .iter()
        .find(|m| m.0 == Phase::Dns)
        .map(|m| (m.1, m.2, m.3.clone()));
    let host_desc = match proxy {
        Some(p) => format!("proxy {}", p.host),
        None => format!("target {}", target.host),
    };
    match (&dns_took, &connected) {
        (Some((took, at, addrs)), _) => {
            w.timings.namelookup = Some(*at);
            dns_detail.insert(0, format!("{host_desc} → {addrs}"));
            w.step("dns", true, *took, dns_detail.join("; "));
        }
        (None, Err(e @ ConnectError::Dns { .. })) => {
            w.step("dns", false, started.elapsed(), format!("{host_desc}: {e}"));
            let c = cause::from_connect_error(e, proxy.is_some());
            return w.fail(via, c, format!("The {host_desc} does not resolve: {e}."));
        }
        (
            None,
            Err(
                e @ ConnectError::Timeout {
                    phase: Phase::Dns, ..
                },
            ),
        ) => {
            w.step("dns", false, started.elapsed(), format!("{host_desc}: {e}"));
            let c = if proxy.is_some() {
                Cause::ProxyDnsFailure
            } else {
                Cause::TargetDnsFailure
            };
            return w.fail(via, c, format!("Resolving the {host_desc} timed out."));
        }
        (None, _) => {
            w.timings.namelookup = Some(0.0);
            dns_detail.insert(0, format!("{host_desc} is an address: no lookup"));
            w.step("dns", true, Duration::ZERO, dns_detail.join("; "));
        }
    }
    let tcp_mark = rec
        .marks
        .iter()
        .find(|m| m.0 == Phase::Tcp)
        .map(|m| (m.1, m.2, m.3.clone()));
    let mut conn = match connected {
        Ok(c) => {
            if let Some((took, at, addr)) = &tcp_mark {
                w.timings.connect = Some(*at);
                w.step("tcp", true, *took, format!("connected to {addr}"));
            }
            if let Some(m) = rec.marks.iter().find(|m| m.0 == Phase::ProxyTls) {
                w.step("proxy_tls", true, m.1, "TLS to the proxy established");
            }
            c
        }
        Err(e) => {
            let c = cause::from_connect_error(&e, proxy.is_some());
            let name = if matches!(e, ConnectError::Tls { .. }) {
                "proxy_tls"
            } else {
                "tcp"
            };
            w.step(name, false, started.elapsed(), tcp_explain(&e));
            return w.fail(via, c, format!("{}: {}", host_desc, tcp_explain(&e)));
        }
    };

    // Proxy handshake: CONNECT for https (and for non-HTTP proxies), SOCKS5.
    let absolute_form =
        matches!(proxy.map(|p| p.scheme), Some(Scheme::Http | Scheme::Https)) && !https;
    if let Some(p) = proxy {
        let hs_start = Instant::now();
        let res: Result<String, ConnectError> = match p.scheme {
            Scheme::Http | Scheme::Https if absolute_form => Ok(String::new()),
            Scheme::Http | Scheme::Https => {
                let r = tokio::time::timeout(
                    t,
                    http_connect::exchange(&mut conn, target, p.credentials.as_ref()),
                )
                .await;
                match r {
                    Err(_) => Err(ConnectError::timeout(Phase::ProxyHandshake, t, true)),
                    Ok(Err(e)) => Err(e),
                    Ok(Ok((head, rest))) => {
                        match http_connect::check_reply(&head, p.credentials.is_some()) {
                            Ok(()) => {
                                conn.prefix = rest;
                                Ok(format!(
                                    "CONNECT {target} → {} {}",
                                    head.status, head.reason
                                ))
                            }
                            Err(e) => {
                                let extra = head
                                    .header("x-squid-error")
                                    .map(|v| format!(" (X-Squid-Error: {v})"))
                                    .unwrap_or_default();
                                w.step(
                                    "proxy_handshake",
                                    false,
                                    hs_start.elapsed(),
                                    format!(
                                        "CONNECT {target} → {} {}{extra}",
                                        head.status, head.reason
                                    ),
                                );
                                let c = refine_status(&e, &head);
                                return w.fail(via, c, handshake_summary(&e, &head));
                            }
                        }
                    }
                }
            }
            Scheme::Socks5 | Scheme::Socks5h => {
                let dest = if p.scheme == Scheme::Socks5 {
                    match ctx
                        .resolver
                        .resolve(&target.host, target.port, t, false)
                        .await
                    {
                        Ok(a) => Target::new(Host::Ip(a[0].ip()), target.port),
                        Err(e) => {
                            w.step(
                                "proxy_handshake",
                                false,
                                hs_start.elapsed(),
                                format!("socks5:// resolves the target locally: {e}"),
                            );
                            return w.fail(via, Cause::TargetDnsFailure, format!("The target does not resolve locally (socks5:// resolves names here; socks5h:// would let the proxy): {e}."));
                        }
                    }
                } else {
                    target.clone()
                };
                match tokio::time::timeout(
                    t,
                    socks5::handshake(&mut conn, &dest, p.credentials.as_ref()),
                )
                .await
                {
                    Err(_) => Err(ConnectError::timeout(Phase::ProxyHandshake, t, true)),
                    Ok(Err(e)) => Err(e),
                    Ok(Ok(())) => Ok(format!("SOCKS5 CONNECT {dest} → succeeded")),
                }
            }
            Scheme::Direct => Ok(String::new()),
        };
        match res {
            Ok(d) if !absolute_form => {
                w.timings.proxy_handshake = Some(ms(started.elapsed()));
                w.step("proxy_handshake", true, hs_start.elapsed(), d);
            }
            Ok(_) => {}
            Err(e) => {
                w.step("proxy_handshake", false, hs_start.elapsed(), e.to_string());
                let c = cause::from_connect_error(&e, true);
                return w.fail(via, c, format!("The proxy handshake failed: {e}."));
            }
        }
    }

    // TLS with the target, through the tunnel.
    let mut io: Box<dyn Io> = Box::new(conn);
    if https {
        let tls_start = Instant::now();
        let verifier = match tlsinfo::Recording::new(ca) {
            Ok(v) => v,
            Err(e) => {
                return w.fail(
                    via,
                    Cause::TlsProtocolMismatch,
                    format!("cannot build TLS verifier: {e}"),
                )
            }
        };
        let mut cfg = match rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        {
            Ok(b) => b
                .dangerous()
                .with_custom_certificate_verifier(verifier.clone())
                .with_no_client_auth(),
            Err(e) => return w.fail(via, Cause::TlsProtocolMismatch, e.to_string()),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = match rustls_pki_types::ServerName::try_from(target.host.bare()) {
            Ok(n) => n,
            Err(e) => return w.fail(via, Cause::TlsHostnameMismatch, e.to_string()),
        };
        let r = tokio::time::timeout(
            t,
            tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, io),
        )
        .await;
        let chain = verifier.chain.lock().map(|c| c.clone()).unwrap_or_default();
        w.cert = chain.first().and_then(tlsinfo::summarise);
        match r {
            Err(_) => {
                w.step(
                    "tls",
                    false,
                    tls_start.elapsed(),
                    format!("no TLS answer within {t:?}"),
                );
                let c = if proxy.is_some() {
                    Cause::ProxyTimeout
                } else {
                    Cause::TargetTimeout
                };
                return w.fail(via, c, "The TLS handshake timed out.".into());
            }
            Ok(Err(e)) => {
                let err = crate::upstream::tls::classify(&e, &target.host.bare(), false);
                let mut c = cause::from_connect_error(&err, proxy.is_some());
                let mut detail = err.to_string();
                if let Some(cert) = &w.cert {
                    detail.push_str(&format!(
                        "; certificate subject {:?}, issuer {:?}, SANs {:?}, valid {} → {}",
                        cert.subject, cert.issuer, cert.sans, cert.not_before, cert.not_after
                    ));
                    if c == Cause::TlsCertUntrusted && cause::looks_intercepted(&cert.issuer) {
                        c = Cause::TlsIntercepted;
                    }
                }
                let summary = match c {
                    Cause::TlsIntercepted => format!("The certificate for {} was issued by {:?}, a TLS-inspecting proxy, which this machine does not trust.", target.host, w.cert.as_ref().map(|c| c.issuer.clone()).unwrap_or_default()),
                    Cause::TlsCertExpired => {
                        let skew = w.cert.as_ref().map(|c| {
                            if c.valid_in_s > 0 {
                                format!(" It becomes valid in {} s: is this machine's clock behind?", c.valid_in_s)
                            } else if c.expires_in_s < 0 && c.expires_in_s > -86_400 * 2 {
                                format!(" It expired {} s ago: check it was renewed, or this machine's clock.", -c.expires_in_s)
                            } else {
                                String::new()
                            }
                        }).unwrap_or_default();
                        format!("The certificate of {} is outside its validity period.{skew}", target.host)
                    }
                    Cause::TlsHostnameMismatch => format!("The certificate is not valid for {} (it names {:?}).", target.host, w.cert.as_ref().map(|c| c.sans.clone()).unwrap_or_default()),
                    Cause::TlsCertUntrusted => format!("The certificate of {} is signed by an unknown issuer {:?}.", target.host, w.cert.as_ref().map(|c| c.issuer.clone()).unwrap_or_default()),
                    _ => format!("The TLS handshake with {} failed: {detail}.", target.host),
                };
                w.step("tls", false, tls_start.elapsed(), detail);
                return w.fail(via, c, summary);
            }
            Ok(Ok(tls)) => {
                let (_, sess) = tls.get_ref();
                let version = sess
                    .protocol_version()
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default();
                let cipher = sess
                    .negotiated_cipher_suite()
                    .map(|c| format!("{:?}", c.suite()))
                    .unwrap_or_default();
                let alpn = sess
                    .alpn_protocol()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .unwrap_or_else(|| "none".into());
                let mut d = format!(
                    "{version}, {cipher}, ALPN {alpn}, verified against the platform roots"
                );
                if let Some(c) = &w.cert {
                    d.push_str(&format!(
                        "; subject {:?}, issuer {:?}, SANs {:?}, valid until {}",
                        c.subject, c.issuer, c.sans, c.not_after
                    ));
                }
                w.timings.appconnect = Some(ms(started.elapsed()));
                w.step("tls", true, tls_start.elapsed(), d);
                io = Box::new(tls);
            }
        }
    }

    // HTTP request.
    let http_start = Instant::now();
    let path = if absolute_form {
        url.as_str().to_string()
    } else {
        let mut p = url.path().to_string();
        if let Some(q) = url.query() {
            p.push('?');
            p.push_str(q);
        }
        p
    };
    let fetched = async {
        let (mut tx, c) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = c.await;
        });
        let host_header = if url.port().is_some() {
            format!("{}:{}", bracket(&target.host.bare()), target.port)
        } else {
            target.host.bare()
        };
        let mut req = http::Request::get(path)
            .header(http::header::HOST, host_header)
            .header(
                http::header::USER_AGENT,
                concat!("proxyguard-doctor/", env!("CARGO_PKG_VERSION")),
            );
        if absolute_form {
            if let Some(a) = proxy.and_then(|p| p.credentials.as_ref()) {
                req = req.header(
                    http::header::PROXY_AUTHORIZATION,
                    http_connect::basic_auth(a),
                );
            }
        }
        let req = req.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = tx.send_request(req).await.map_err(|e| e.to_string())?;
        let ttfb = started.elapsed();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>((parts, body, ttfb))
    };
    match tokio::time::timeout(t, fetched).await {
        Err(_) => {
            w.step(
                "http",
                false,
                http_start.elapsed(),
                format!("no response within {t:?}"),
            );
            let c = if proxy.is_some() && absolute_form {
                Cause::ProxyTimeout
            } else {
                Cause::TargetTimeout
            };
            w.fail(
                via,
                c,
                "The server accepted the connection but did not answer.".into(),
            )
        }
        Ok(Err(e)) => {
            w.step("http", false, http_start.elapsed(), e.clone());
            let c = if proxy.is_some() {
                Cause::ProxyReset
            } else {
                Cause::TargetRefused
            };
            w.fail(
                via,
                c,
                format!("The connection broke before a response: {e}."),
            )
        }
        Ok(Ok((parts, body, ttfb))) => {
            w.timings.starttransfer = Some(ms(ttfb));
            w.timings.total = ms(started.elapsed());
            let status = parts.status.as_u16();
            let detail = format!(
                "GET {} → {} {} ({} bytes), first byte at {:.1} ms",
                url,
                status,
                parts.status.canonical_reason().unwrap_or(""),
                body.len(),
                ms(ttfb)
            );
            let from_proxy = absolute_form
                && (parts.headers.contains_key("x-squid-error")
                    || parts.headers.contains_key("proxy-status")
                    || String::from_utf8_lossy(&body)
                        .to_ascii_lowercase()
                        .contains("tinyproxy"));
            if let Some(msg) = parts
                .headers
                .get("x-ca-error-message")
                .and_then(|v| v.to_str().ok())
            {
                use crate::signer::verify::{parse_gateway_error, GatewayError};
                let gw = parse_gateway_error(msg);
                let skew = parts
                    .headers
                    .get(http::header::DATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|d| httpdate::parse_http_date(d).ok())
                    .map(|server| {
                        let now = std::time::SystemTime::now();
                        match now.duration_since(server) {
                            Ok(ahead) => ahead.as_secs() as i64,
                            Err(e) => -(e.duration().as_secs() as i64),
                        }
                    });
                let skew_txt = skew
                    .map(|s| {
                        format!(
                            " This machine's clock is {} s {} the server's Date.",
                            s.abs(),
                            if s >= 0 { "ahead of" } else { "behind" }
                        )
                    })
                    .unwrap_or_default();
                let (c, why) = match gw {
                    GatewayError::InvalidSignature { server_sts } => (
                        Cause::SignatureMismatch,
                        format!("The API Gateway rejected the signature ({msg}).{}", server_sts.map(|s| format!(" Server StringToSign: {s}")).unwrap_or_default()),
                    ),
                    GatewayError::TimestampExpired | GatewayError::InvalidTimestamp => (
                        Cause::TimestampExpired,
                        format!("The API Gateway says the timestamp is invalid or expired ({msg}).{skew_txt}"),
                    ),
                    _ => (Cause::HttpError, format!("The API Gateway answered {status}: {msg}.")),
                };
                w.step(
                    "http",
                    false,
                    http_start.elapsed(),
                    format!("{detail}; X-Ca-Error-Message: {msg}"),
                );
                let mut r = w.fail(via, c, why);
                r.status = Some(status);
                return r;
            }
            if status == 407 && absolute_form {
                w.step("http", false, http_start.elapsed(), detail);
                let scheme = parts
                    .headers
                    .get(http::header::PROXY_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let e = if proxy.and_then(|p| p.credentials.as_ref()).is_some() {
                    ConnectError::ProxyAuthRejected {
                        scheme: scheme.clone(),
                    }
                } else {
                    ConnectError::ProxyAuthRequired {
                        scheme: scheme.clone(),
                    }
                };
                let head = http_connect::ReplyHead {
                    status,
                    reason: String::new(),
                    headers: vec![("proxy-authenticate".into(), scheme)],
                };
                return w.fail(
                    via,
                    cause::from_connect_error(&e, true),
                    handshake_summary(&e, &head),
                );
            }
            if from_proxy && status >= 500 {
                w.step("http", false, http_start.elapsed(), detail);
                return w.fail(
                    via,
                    Cause::ProxyUpstreamError,
                    format!("The proxy answered {status}: it could not reach the target."),
                );
            }
            if from_proxy && status == 403 {
                w.step("http", false, http_start.elapsed(), detail);
                return w.fail(
                    via,
                    Cause::ProxyForbidden,
                    "The proxy refused the request by policy (403).".into(),
                );
            }
            if status >= 400 {
                w.step("http", false, http_start.elapsed(), detail);
                let mut r = w.fail(
                    via,
                    Cause::HttpError,
                    format!("The server answered {status}."),
                );
                r.status = Some(status);
                return r;
            }
            w.step("http", true, http_start.elapsed(), detail);
            PathReport {
                via,
                ok: true,
                cause: None,
                summary: format!(
                    "{url} fetched: {status} in {:.1} ms.",
                    ms(started.elapsed())
                ),
                fix: String::new(),
                status: Some(status),
                steps: w.steps,
                timings: w.timings,
                certificate: w.cert,
            }
        }
    }
}

fn tcp_explain(e: &ConnectError) -> String {
    match e {
        ConnectError::Refused { addr, .. } => format!("connection to {addr} refused (nothing listens there, or a firewall rejects)"),
        ConnectError::Timeout { after, .. } => format!("no answer within {} ms: packets are silently dropped (firewall / security group) or the host is down", after.as_millis()),
        ConnectError::Unreachable { addr, detail, .. } => format!("{addr} unreachable: {detail} (no route)"),
        ConnectError::Reset { .. } => "connection reset".into(),
        other => other.to_string(),
    }
}

fn refine_status(e: &ConnectError, head: &http_connect::ReplyHead) -> Cause {
    if let Some(v) = head.header("x-squid-error") {
        if v.contains("ERR_DNS_FAIL") {
            return Cause::TargetDnsFailure;
        }
        if v.contains("ERR_CONNECT_FAIL") && v.contains("111") {
            return Cause::TargetRefused;
        }
    }
    cause::from_connect_error(e, true)
}

fn handshake_summary(e: &ConnectError, head: &http_connect::ReplyHead) -> String {
    match e {
        ConnectError::ProxyAuthRequired { scheme } | ConnectError::ProxyAuthRejected { scheme } => {
            let lower = scheme.to_ascii_lowercase();
            let windows = if lower.starts_with("ntlm") || lower.starts_with("negotiate") {
                " NTLM/Negotiate means Windows domain authentication: Go and most tools cannot answer it; use Basic credentials the proxy accepts, or a local helper such as cntlm."
            } else {
                ""
            };
            let what = if matches!(e, ConnectError::ProxyAuthRequired { .. }) {
                "requires authentication and none was sent"
            } else {
                "rejected the credentials"
            };
            format!("The proxy {what} (407, Proxy-Authenticate: {}).{windows}", head.header("proxy-authenticate").unwrap_or(scheme))
        }
        ConnectError::ProxyForbidden { .. } => "The proxy refused the CONNECT by policy (403): its ACL does not allow this destination or port.".into(),
        ConnectError::ProxyStatus { status, reason } => format!("The proxy answered {status} {reason}: it could not reach the target."),
        other => format!("The proxy handshake failed: {other}."),
    }
}

async fn compare_dns(
    name: &str,
    port: u16,
    server: SocketAddr,
    system: &Resolver,
    t: Duration,
) -> String {
    use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
    let local: Vec<String> = match system
        .resolve(&Host::Name(name.to_string()), port, t, false)
        .await
    {
        Ok(a) => a.iter().map(|s| s.ip().to_string()).collect(),
        Err(e) => vec![format!("error: {e}")],
    };
    let mut cfg = ResolverConfig::new();
    cfg.add_name_server(NameServerConfig::new(server, Protocol::Udp));
    let mut o = ResolverOpts::default();
    o.timeout = t.min(Duration::from_secs(5));
    o.attempts = 1;
    let r = hickory_resolver::TokioAsyncResolver::tokio(cfg, o);
    let remote: Vec<String> = match r.lookup_ip(name).await {
        Ok(l) => l.iter().map(|ip| ip.to_string()).collect(),
        Err(e) => vec![format!("error: {e}")],
    };
    let mut a = local.clone();
    let mut b = remote.clone();
    a.sort();
    b.sort();
    if a == b {
        format!(
            "{name}: system resolver and {server} agree ({})",
            local.join(", ")
        )
    } else {
        format!(
            "{name}: system resolver says {} but {server} says {}: answers differ",
            local.join(", "),
            remote.join(", ")
        )
    }
}
