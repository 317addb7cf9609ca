//! Reverse-proxy mode: a local listener forwarding to backends across zones
//! with the same pool machinery as upstream proxies (passive ejection,
//! breakers, active probes), zone-aware choice, safe retries (connection
//! failures always; 502/503/504 only for idempotent or buffered requests),
//! optional signing, and a fallback (last good GET, or a static answer).

pub mod cache;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::schema::RouteConfig;
use crate::config::{Applies, UpstreamEntry};
use crate::forward::strip_hop_by_hop;
use crate::http_client::IdlePool;
use crate::pool::{Member, Pool};
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::upstream::{
    tcp_connect, ConnectContext, ConnectError, NoopObserver, Phase, Scheme, Target, UpstreamSpec,
};

type ReqBody = Either<Full<Bytes>, Incoming>;
type RespBody = Either<Incoming, Full<Bytes>>;

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One running route.
pub struct ReverseRoute {
    cfg: RouteConfig,
    pool: Pool,
    router: Arc<Router>,
    ctx: ConnectContext,
    tls: Arc<rustls::ClientConfig>,
    /// Idle keep-alive connections by backend member id.
    idle: Arc<IdlePool<u64, SendRequest<ReqBody>>>,
    /// `via = "pool"`: reach backends through the forward pool.
    via_pool: bool,
    inflight: HashMap<String, AtomicUsize>,
    rr: AtomicUsize,
    cache: cache::Cache,
    secret: Option<String>,
    admission: crate::inbound::Admission,
}

/// Why a route cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("route {listen}: {msg}")]
    Setup { listen: String, msg: String },
}

impl ReverseRoute {
    pub fn new(
        cfg: &RouteConfig,
        all: &crate::config::Config,
        router: Arc<Router>,
    ) -> Result<Self, RouteError> {
        let err = |msg: String| RouteError::Setup {
            listen: cfg.listen.get_ref().clone(),
            msg,
        };
        let mut entries = Vec::new();
        for b in &cfg.backend {
            let u = url::Url::parse(b.url.get_ref()).map_err(|e| err(e.to_string()))?;
            let mut spec = UpstreamSpec::parse(
                b.url.get_ref(),
                &format!(
                    "{}://{}:{}",
                    u.scheme(),
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default().unwrap_or(80)
                ),
            )
            .map_err(|e| err(e.to_string()))?;
            // The name shows in logs, /status and metric labels: no credentials.
            spec.name = crate::config::redact::redact(b.url.get_ref().trim_end_matches('/'));
            entries.push(UpstreamEntry {
                spec,
                zone: b.zone.clone(),
                priority: 0,
                weight: b.weight.max(1),
                max_fails: b.max_fails.max(1),
                fail_timeout: b.fail_timeout.0,
                applies: Applies::ALL,
                origin: "route".into(),
            });
        }
        let inflight = entries
            .iter()
            .map(|e| (e.spec.name.clone(), AtomicUsize::new(0)))
            .collect();
        let tls = match &cfg.ca_file {
            Some(p) => {
                let certs =
                    crate::upstream::tls::load_pem_certs(std::path::Path::new(p)).map_err(err)?;
                crate::upstream::tls::client_config(&certs).map_err(err)?
            }
            None => crate::upstream::tls::default_client_config(),
        };
        let secret =
            match &cfg.sign {
                Some(s) => Some(std::env::var(&s.secret_env).map_err(|_| {
                    err(format!("environment variable {} is not set", s.secret_env))
                })?),
                None => None,
            };
        let mut pool_cfg = all.file.pool.clone();
        pool_cfg.max_attempts = cfg.max_attempts;
        let idle_timeout = pool_cfg.idle_timeout.0;
        Ok(ReverseRoute {
            cfg: cfg.clone(),
            pool: Pool::new(entries, pool_cfg, all.file.breaker.clone()),
            ctx: ConnectContext {
                resolver: router.ctx.resolver.clone(),
                timeouts: all.timeouts,
                tls: tls.clone(),
            },
            router,
            tls,
            idle: Arc::new(IdlePool::new(64, 4096, idle_timeout)),
            via_pool: cfg.via == "pool",
            inflight,
            rr: AtomicUsize::new(0),
            cache: cache::Cache::new(cfg.fallback.as_ref().map(|f| f.max_entries).unwrap_or(0)),
            secret,
            admission: crate::inbound::Admission::new(&all.admission, all.max_connections),
        })
    }

    /// Backends in order: eligible local-zone ones (rotating), then other
    /// zones; local ones at `max_inflight` go behind the others.
    fn order(&self) -> Vec<Arc<Member>> {
        let members = self.pool.members();
        let k = self.rr.fetch_add(1, Ordering::Relaxed);
        let mut eligible: Vec<Arc<Member>> = members
            .iter()
            .filter(|m| m.health.eligible())
            .cloned()
            .collect();
        if eligible.is_empty() {
            // Least bad: soonest back first.
            let mut all: Vec<Arc<Member>> = members
                .iter()
                .filter(|m| !m.health.breaker_open())
                .cloned()
                .collect();
            all.sort_by_key(|m| m.health.available_at());
            return all;
        }
        if !eligible.is_empty() {
            let n = eligible.len();
            eligible.rotate_left(k % n);
        }
        let busy = |m: &Arc<Member>| {
            self.cfg.max_inflight > 0
                && self
                    .inflight
                    .get(m.name())
                    .map(|c| c.load(Ordering::Relaxed))
                    .unwrap_or(0)
                    >= self.cfg.max_inflight
        };
        let local = self.cfg.local_zone.as_deref();
        let rank = |m: &Arc<Member>| -> u8 {
            let is_local = local.is_none() || m.entry.zone.as_deref() == local;
            match (is_local, busy(m)) {
                (true, false) => 0,
                (false, false) => 1,
                (true, true) => 2,
                (false, true) => 3,
            }
        };
        eligible.sort_by_key(rank);
        eligible
    }

    async fn connect(&self, m: &Member) -> Result<Box<dyn Io>, ConnectError> {
        let spec = m.spec();
        let target = Target::new(spec.host.clone(), spec.port);
        let tcp: Box<dyn Io> = if self.via_pool {
            Box::new(self.router.tunnel(&target).await?.0)
        } else {
            Box::new(tcp_connect(&self.ctx, &spec.host, spec.port, false, &mut NoopObserver).await?)
        };
        if spec.scheme != Scheme::Https {
            return Ok(tcp);
        }
        let name = self.cfg.sni.clone().unwrap_or_else(|| spec.host.bare());
        let server_name = rustls_pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            ConnectError::ProxyProtocol {
                detail: format!("bad TLS name {name}: {e}"),
            }
        })?;
        let tls = tokio::time::timeout(
            self.ctx.timeouts.tls,
            tokio_rustls::TlsConnector::from(self.tls.clone()).connect(server_name, tcp),
        )
        .await
        .map_err(|_| ConnectError::timeout(Phase::Tls, self.ctx.timeouts.tls, false))?
        .map_err(|e| crate::upstream::tls::classify(&e, &name, false))?;
        Ok(Box::new(tls))
    }

    async fn sender(&self, m: &Member) -> Result<(SendRequest<ReqBody>, bool), ConnectError> {
        if let Some(tx) = self.idle.checkout(&m.id) {
            return Ok((tx, true));
        }
        let io = self.connect(m).await?;
        let tx = crate::http_client::handshake::<_, ReqBody>(io)
            .await
            .map_err(|e| ConnectError::Io {
                phase: Phase::FirstByte,
                detail: e.to_string(),
                proxy: false,
            })?;
        Ok((tx, false))
    }

    fn checkin(&self, m: &Member, mut tx: SendRequest<ReqBody>) {
        let (idle, id) = (self.idle.clone(), m.id);
        tokio::spawn(async move {
            if tx.ready().await.is_ok() {
                idle.checkin(id, tx);
            }
        });
    }

    fn forwarded_headers(&self, h: &mut HeaderMap, peer: SocketAddr) {
        let ip = peer.ip().to_string();
        let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(prev) => format!("{prev}, {ip}"),
            None => ip.clone(),
        };
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        if let Ok(v) = HeaderValue::from_str(&xff) {
            h.insert("x-forwarded-for", v);
        }
        h.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        let node = if peer.is_ipv6() {
            format!("\"[{ip}]\"")
        } else {
            ip
        };
        let mut fwd = format!("for={node};proto=http");
        if let Some(hst) = &host {
            if let Ok(v) = HeaderValue::from_str(hst) {
                h.insert("x-forwarded-host", v);
            }
            fwd.push_str(&format!(";host=\"{hst}\""));
        }
        if let Ok(v) = HeaderValue::from_str(&fwd) {
            h.append(header::FORWARDED, v);
        }
    }

    fn sign(&self, parts: &mut http::request::Parts, body: &Bytes) -> Result<(), String> {
        let (Some(sg), Some(secret)) = (&self.cfg.sign, &self.secret) else {
            return Ok(());
        };
        let url = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
            .to_string();
        let mut req = crate::signer::SignRequest::new(parts.method.as_str(), url);
        for (k, v) in parts.headers.iter() {
            if let Ok(v) = v.to_str() {
                req = req.with_header(k.as_str(), v);
            }
        }
        req = req.with_body(body.to_vec());
        let method = match sg.signature_method.as_deref() {
            Some(m) if m.eq_ignore_ascii_case("hmacsha1") => {
                crate::signer::apigw::SignatureMethod::HmacSha1
            }
            _ => crate::signer::apigw::SignatureMethod::HmacSha256,
        };
        let params = crate::signer::apigw::ApigwParams {
            app_key: sg.key.clone(),
            signature_method: method,
            stage: sg.stage.clone(),
            extra_signed_headers: sg.headers.clone(),
            timestamp_ms: None,
            nonce: None,
        };
        let headers =
            crate::signer::apigw::sign(&req, secret, &params).map_err(|e| e.to_string())?;
        for (k, v) in headers {
            let name = header::HeaderName::from_bytes(k.as_bytes()).map_err(|e| e.to_string())?;
            let val = HeaderValue::from_str(&v).map_err(|e| e.to_string())?;
            parts.headers.insert(name, val);
        }
        Ok(())
    }

    fn host_for(&self, m: &Member, client_host: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self.cfg.host.as_deref() {
            Some("keep") => client_host.cloned(),
            Some(lit) => HeaderValue::from_str(lit).ok(),
            None => {
                let s = m.spec();
                let default = if s.scheme == Scheme::Https { 443 } else { 80 };
                let h = if s.port == default {
                    s.host.to_string()
                } else {
                    format!("{}:{}", s.host, s.port)
                };
                HeaderValue::from_str(&h).ok()
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<RespBody> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        let size = body.size_hint().exact();
        let buffer =
            body.is_end_stream() || size.is_some_and(|n| n as usize <= self.cfg.retry_body_limit);
        let (mut buffered, mut stream) = (None, None);
        if buffer {
            match body.collect().await {
                Ok(b) => buffered = Some(b.to_bytes()),
                Err(e) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        &format!("proxyguard: cannot read request body: {e}"),
                    )
                }
            }
        } else {
            stream = Some(body);
        }
        let client_host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        self.forwarded_headers(&mut parts.headers, peer);
        if self.cfg.sign.is_some() {
            let Some(b) = &buffered else {
                return text(StatusCode::PAYLOAD_TOO_LARGE, &format!("proxyguard: bodies over route.retry_body_limit ({} bytes) cannot be signed", self.cfg.retry_body_limit));
            };
            if let Err(e) = self.sign(&mut parts, b) {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    &format!("proxyguard: signing failed: {e}"),
                );
            }
        }
        let cache_key = format!("{} {}", parts.method, parts.uri);
        // A retry re-sends only a body held in full: a streamed body is gone
        // once sent, and an empty replay would run a different request.
        // A 5xx is retried only for idempotent methods (the backend may have
        // acted on a POST before answering 502).
        let retry_5xx = idempotent && buffered.is_some();
        let cacheable_request = cache::request_may_use_cache(&parts.headers);
        let order = self.order();
        let mut last_err: Option<String> = None;
        let mut attempts = 0;
        for m in order.iter() {
            if attempts >= self.cfg.max_attempts as usize {
                break;
            }
            attempts += 1;
            let (mut tx, _reused) = match self.sender(m).await {
                Ok(x) => x,
                Err(e) => {
                    self.pool.report_failure(m, &as_backend_fault(e.clone()));
                    last_err = Some(format!("{}: {e}", m.name()));
                    continue;
                }
            };
            let mut r = Request::new(match (&buffered, stream.take()) {
                (Some(b), _) => Either::Left(Full::new(b.clone())),
                (None, Some(s)) => Either::Right(s),
                (None, None) => Either::Left(Full::new(Bytes::new())),
            });
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/")
                .parse()
                .unwrap_or_default();
            *r.headers_mut() = parts.headers.clone();
            if let Some(h) = self.host_for(m, client_host.as_ref()) {
                r.headers_mut().insert(header::HOST, h);
            }
            let counter = self.inflight.get(m.name());
            if let Some(c) = counter {
                c.fetch_add(1, Ordering::Relaxed);
            }
            let t0 = Instant::now();
            let sent = tokio::time::timeout(self.cfg.timeout.0, tx.send_request(r)).await;
            if let Some(c) = counter {
                c.fetch_sub(1, Ordering::Relaxed);
            }
            let resp = match sent {
                Err(_) => {
                    let e = ConnectError::Timeout {
                        phase: Phase::FirstByte,
                        after: self.cfg.timeout.0,
                        proxy: true,
                    };
                    self.pool.report_failure(m, &e);
                    last_err = Some(format!("{}: {e}", m.name()));
                    if buffered.is_none() {
                        break;
                    }
                    continue;
                }
                Ok(Err(e)) => {
                    let ce = ConnectError::Reset {
                        phase: Phase::FirstByte,
                        proxy: true,
                    };
                    self.pool.report_failure(m, &ce);
                    last_err = Some(format!("{}: {e}", m.name()));
                    if buffered.is_none() {
                        break;
                    }
                    continue;
                }
                Ok(Ok(resp)) => resp,
            };
            let status = resp.status().as_u16();
            if matches!(status, 502..=504)
                && retry_5xx
                && attempts < self.cfg.max_attempts as usize
                && attempts < order.len()
            {
                self.pool.report_failure(
                    m,
                    &ConnectError::ProxyStatus {
                        status,
                        reason: "backend".into(),
                    },
                );
                last_err = Some(format!("{}: answered {status}", m.name()));
                self.checkin(m, tx);
                continue;
            }
            self.pool.report_success(m, t0.elapsed());
            self.checkin(m, tx);
            tracing::info!(target: "access", kind = "reverse", client = %peer, method = %parts.method, path = %parts.uri, backend = m.name(), status, duration_ms = started.elapsed().as_millis() as u64, "request");
            let (mut rp, rb) = resp.into_parts();
            strip_hop_by_hop(&mut rp.headers);
            // Remember good GETs for the fallback.
            if let Some(fb) = &self.cfg.fallback {
                if fb.cache_get.is_some()
                    && parts.method == Method::GET
                    && status == 200
                    && cacheable_request
                    && cache::response_may_be_stored(&rp.headers)
                {
                    let small = rb
                        .size_hint()
                        .exact()
                        .is_some_and(|n| n as usize <= fb.max_body);
                    if small {
                        return match rb.collect().await {
                            Ok(b) => {
                                let b = b.to_bytes();
                                self.cache
                                    .put(cache_key, rp.status, rp.headers.clone(), b.clone());
                                Response::from_parts(rp, Either::Right(Full::new(b)))
                            }
                            Err(e) => text(
                                StatusCode::BAD_GATEWAY,
                                &format!("proxyguard: backend body failed: {e}"),
                            ),
                        };
                    }
                }
            }
            return Response::from_parts(rp, Either::Left(rb));
        }
        self.fallback(
            &parts.method,
            cacheable_request.then_some(cache_key.as_str()),
            last_err.unwrap_or_else(|| "no backend available".into()),
            peer,
            started,
        )
    }

    /// `key` is None when the request may not be answered from the cache
    /// (it carries credentials).
    fn fallback(
        &self,
        method: &Method,
        key: Option<&str>,
        why: String,
        peer: SocketAddr,
        started: Instant,
    ) -> Response<RespBody> {
        tracing::warn!(target: "access", kind = "reverse", client = %peer, duration_ms = started.elapsed().as_millis() as u64, error = %why, "no backend could serve");
        let ps = format!(
            "proxyguard; error=destination_unavailable; details=\"{}\"",
            why.replace(['"', '\\'], "'")
        );
        if let Some(fb) = &self.cfg.fallback {
            if let (Some(age), true, Some(key)) = (fb.cache_get, *method == Method::GET, key) {
                if let Some((status, headers, body, stored)) = self.cache.get(key, age.0) {
                    let mut r = Response::new(Either::Right(Full::new(body)));
                    *r.status_mut() = status;
                    *r.headers_mut() = headers;
                    let age_s = stored.elapsed().as_secs();
                    r.headers_mut()
                        .insert(header::AGE, HeaderValue::from(age_s));
                    r.headers_mut().insert(
                        header::WARNING,
                        HeaderValue::from_static("110 proxyguard \"Response is Stale\""),
                    );
                    if let Ok(v) = HeaderValue::from_str(&ps) {
                        r.headers_mut().insert("proxy-status", v);
                    }
                    return r;
                }
            }
            let mut r = text(
                StatusCode::from_u16(fb.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                &fb.body,
            );
            if let Ok(v) = HeaderValue::from_str(&ps) {
                r.headers_mut().insert("proxy-status", v);
            }
            return r;
        }
        let mut r = text(
            StatusCode::BAD_GATEWAY,
            &format!("proxyguard: 502 Bad Gateway: {why}"),
        );
        if let Ok(v) = HeaderValue::from_str(&ps) {
            r.headers_mut().insert("proxy-status", v);
        }
        r
    }

    /// Probes direct backends (TCP/TLS) on the health interval.
    fn spawn_checks(
        self: &Arc<Self>,
        cfg: crate::config::schema::HealthConfig,
        shutdown: Shutdown,
    ) {
        if !cfg.enabled || self.cfg.via == "pool" {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(cfg.interval.0) => {}
                    _ = shutdown.triggered() => return,
                }
                for m in me.pool.members().iter() {
                    let r = tokio::time::timeout(cfg.timeout.0, me.connect(m)).await;
                    let (ok, detail) = match r {
                        Ok(Ok(_)) => (true, "connect ok".to_string()),
                        Ok(Err(e)) => (false, e.to_string()),
                        Err(_) => (false, "timed out".to_string()),
                    };
                    me.pool.transitions(
                        m,
                        m.health
                            .record_check(ok, false, &detail, cfg.rise, cfg.fall),
                    );
                }
            }
        });
    }
}

/// A connection failure to a backend is the backend's fault (passive health).
fn as_backend_fault(e: ConnectError) -> ConnectError {
    match e {
        ConnectError::Refused { addr, .. } => ConnectError::Refused { addr, proxy: true },
        ConnectError::Timeout { phase, after, .. } => ConnectError::Timeout {
            phase,
            after,
            proxy: true,
        },
        ConnectError::Reset { phase, .. } => ConnectError::Reset { phase, proxy: true },
        ConnectError::Unreachable { addr, detail, .. } => ConnectError::Unreachable {
            addr,
            detail,
            proxy: true,
        },
        ConnectError::Io { phase, detail, .. } => ConnectError::Io {
            phase,
            detail,
            proxy: true,
        },
        ConnectError::Dns { host, detail, .. } => ConnectError::Dns {
            host,
            detail,
            proxy: true,
        },
        ConnectError::Tls {
            kind,
            server,
            detail,
            ..
        } => ConnectError::Tls {
            kind,
            server,
            detail,
            proxy: true,
        },
        other => other,
    }
}

fn text(status: StatusCode, msg: &str) -> Response<RespBody> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(format!("{msg}\n")))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Binds and serves every configured route.
pub async fn start(
    cfg: &crate::config::Config,
    router: Arc<Router>,
    shutdown: Shutdown,
) -> Result<Vec<(SocketAddr, Arc<ReverseRoute>)>, crate::server::ServeError> {
    let mut out = Vec::new();
    for rc in &cfg.file.route {
        let addr: SocketAddr = rc.listen.get_ref().trim().parse().map_err(|_| {
            crate::server::ServeError::Route(format!("bad listen {}", rc.listen.get_ref()))
        })?;
        let route = Arc::new(
            ReverseRoute::new(rc, cfg, router.clone())
                .map_err(|e| crate::server::ServeError::Route(e.to_string()))?,
        );
        let listener = crate::inbound::bind(addr)
            .await
            .map_err(|source| crate::server::ServeError::Bind { addr, source })?;
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!(addr = %local, backends = rc.backend.len(), local_zone = rc.local_zone.as_deref().unwrap_or("-"), via = %rc.via, "reverse route");
        route.spawn_checks(cfg.file.health.clone(), shutdown.clone());
        let r2 = route.clone();
        let sd = shutdown.clone();
        let header_timeout = cfg.client_header_timeout;
        let keepalive = cfg.timeouts.tcp_keepalive;
        tokio::spawn(async move {
            loop {
                let Some(permit) = r2.admission.slot().await else {
                    return;
                };
                let (stream, peer) = tokio::select! {
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; } },
                    _ = sd.triggered() => return,
                };
                if !r2.admission.peer_allowed(peer.ip()) {
                    continue;
                }
                let _ = stream.set_nodelay(true);
                crate::tcp_keepalive::apply(keepalive, &stream);
                let r3 = r2.clone();
                let live = sd.live();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let r4 = r3.clone();
                        async move { Ok::<_, Infallible>(r4.handle(req, peer).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    drop(live);
                    drop(permit);
                });
            }
        });
        out.push((local, route));
    }
    Ok(out)
}

impl ReverseRoute {
    /// The backend pool (for status and tests).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The route's configuration (read-only, for status).
    pub fn config(&self) -> &RouteConfig {
        &self.cfg
    }
}
