//! Reverse-proxy mode: a local listener forwarding to backends across zones
//! with the same pool machinery as upstream proxies (passive ejection,
//! breakers, active probes), zone-aware choice, safe retries (connection
//! failures always; 502/503/504 only for idempotent or buffered requests),
//! optional signing, and a fallback (last good GET, or a static answer).
//!
//! Protocols (docs/protocols.md): HTTP/1.1 and h2c on the listener,
//! HTTP/1.1 or HTTP/2 to each backend with a per-backend fallback to
//! HTTP/1.1 (`fallback`), gRPC-aware retries and deadlines (`grpc`),
//! WebSocket and other upgrades (`upgrade`).

mod answer;
mod backend;
pub mod cache;
mod fallback;
mod grpc;
mod headers;
mod health;
mod listener;
mod replay;
mod upgrade;

pub use fallback::RETRY_H2_AFTER;
pub use grpc::{call_deadline, encode_grpc_timeout, is_grpc, parse_grpc_timeout};
pub use health::{health_request, health_status};
pub use listener::start;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::route_protocols::{BackendCheck, BackendProtocol};
use crate::config::schema::RouteConfig;
use crate::config::{Applies, UpstreamEntry};
use crate::forward::strip_hop_by_hop;
use crate::http_client::{IdlePool, SharedConns};
use crate::pool::{Member, Outcome, Pool};
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::upstream::{ConnectContext, ConnectError, Phase, UpstreamSpec};

use answer::text;
use backend::{AttemptError, TlsConfigs};
use fallback::ProtoState;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReqBody = UnsyncBoxBody<Bytes, BoxError>;
type RespBody = UnsyncBoxBody<Bytes, BoxError>;

fn full_body(b: Bytes) -> UnsyncBoxBody<Bytes, BoxError> {
    Full::new(b).map_err(|e| match e {}).boxed_unsync()
}

fn incoming_body(b: Incoming) -> UnsyncBoxBody<Bytes, BoxError> {
    b.map_err(BoxError::from).boxed_unsync()
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Per-backend state besides the pool's health.
struct BackendState {
    state: ProtoState,
    check: BackendCheck,
    inflight: AtomicUsize,
}

impl std::ops::Deref for BackendState {
    type Target = ProtoState;
    fn deref(&self) -> &ProtoState {
        &self.state
    }
}

/// One running route.
pub struct ReverseRoute {
    cfg: RouteConfig,
    pool: Pool,
    router: Arc<Router>,
    ctx: ConnectContext,
    tls: TlsConfigs,
    /// Idle HTTP/1.1 keep-alive connections by backend member id.
    idle: Arc<IdlePool<u64, http1::SendRequest<ReqBody>>>,
    /// The shared HTTP/2 connection of each backend member.
    h2: SharedConns<u64, http2::SendRequest<ReqBody>>,
    /// `via = "pool"`: reach backends through the forward pool.
    via_pool: bool,
    /// By backend name.
    backends: HashMap<String, BackendState>,
    /// Fallback for a member whose name is not in `backends` (none today).
    unknown: BackendState,
    rr: AtomicUsize,
    cache: cache::Cache,
    secret: Option<String>,
    admission: crate::inbound::Admission,
    idle_timeout: Duration,
    shutdown: Shutdown,
    /// TLS on the route listener (`cert`/`key`).
    server_tls: Option<Arc<crate::tls_acceptor::ServerTls>>,
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
        shutdown: Shutdown,
    ) -> Result<Self, RouteError> {
        let err = |msg: String| RouteError::Setup {
            listen: cfg.listen.get_ref().clone(),
            msg,
        };
        let fallback_h1 = cfg.fallback.as_ref().is_some_and(|f| f.protocol.is_some());
        let mut entries = Vec::new();
        let mut backends = HashMap::new();
        for b in &cfg.backend {
            let u = url::Url::parse(b.url.get_ref()).map_err(|e| err(e.to_string()))?;
            let proto = BackendProtocol::from_scheme(u.scheme())
                .ok_or_else(|| err(format!("unsupported backend scheme {}://", u.scheme())))?;
            let mut spec = UpstreamSpec::parse(
                b.url.get_ref(),
                &format!(
                    "{}://{}:{}",
                    proto.transport_scheme(),
                    u.host_str().unwrap_or(""),
                    u.port_or_known_default()
                        .unwrap_or(if proto.tls() { 443 } else { 80 })
                ),
            )
            .map_err(|e| err(e.to_string()))?;
            // The name shows in logs, /status and metric labels: no credentials.
            spec.name = crate::config::redact::redact(b.url.get_ref().trim_end_matches('/'));
            backends.insert(
                spec.name.clone(),
                BackendState {
                    state: ProtoState::new(proto, fallback_h1),
                    check: b.check.unwrap_or_default(),
                    inflight: AtomicUsize::new(0),
                },
            );
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
            tls: TlsConfigs::new(tls),
            idle: Arc::new(IdlePool::new(64, 4096, idle_timeout)),
            h2: SharedConns::new(),
            via_pool: cfg.via == "pool",
            backends,
            unknown: BackendState {
                state: ProtoState::new(BackendProtocol::Http1, false),
                check: BackendCheck::Connect,
                inflight: AtomicUsize::new(0),
            },
            rr: AtomicUsize::new(0),
            cache: cache::Cache::new(cfg.fallback.as_ref().map(|f| f.max_entries).unwrap_or(0)),
            secret,
            admission: crate::inbound::Admission::new(&all.admission),
            idle_timeout: all.idle_timeout,
            shutdown,
            server_tls: None,
        })
    }

    fn proto(&self, m: &Member) -> &BackendState {
        self.backends.get(m.name()).unwrap_or(&self.unknown)
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
                && self.proto(m).inflight.load(Ordering::Relaxed) >= self.cfg.max_inflight
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

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        tls: bool,
    ) -> Response<RespBody> {
        if let Some(proto) = upgrade::requested(&req) {
            return self.handle_upgrade(req, proto, peer, tls).await;
        }
        let started = Instant::now();
        let grpc = self.cfg.grpc || grpc::is_grpc(req.headers());
        let (mut parts, body) = req.into_parts();
        if !parts.headers.contains_key(header::HOST) {
            // HTTP/2 carries the host as :authority (in the URI).
            let authority = parts.uri.authority().map(|a| a.as_str().to_string());
            if let Some(v) = authority.and_then(|a| HeaderValue::from_str(&a).ok()) {
                parts.headers.insert(header::HOST, v);
            }
        }
        let client_host = parts.headers.get(header::HOST).cloned();
        let te_trailers = parts
            .headers
            .get_all(header::TE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
        strip_hop_by_hop(&mut parts.headers);
        if te_trailers {
            // The one TE value HTTP/2 allows; gRPC servers expect it.
            parts
                .headers
                .insert(header::TE, HeaderValue::from_static("trailers"));
        }
        self.forwarded_headers(&mut parts.headers, peer, tls);
        if grpc {
            return self
                .handle_grpc(parts, client_host, body, peer, started)
                .await;
        }
        self.handle_http(parts, client_host, body, peer, started)
            .await
    }

    async fn handle_http(
        self: Arc<Self>,
        mut parts: http::request::Parts,
        client_host: Option<HeaderValue>,
        body: Incoming,
        peer: SocketAddr,
        started: Instant,
    ) -> Response<RespBody> {
        let idempotent = matches!(
            parts.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        );
        let (buffered, mut stream) = match self.read_body(body).await {
            Ok(x) => x,
            Err(r) => return r,
        };
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
            let mut make = || match (&buffered, stream.take()) {
                (Some(b), _) => Some(full_body(b.clone())),
                (None, Some(s)) => Some(incoming_body(s)),
                (None, None) => None,
            };
            let t0 = Instant::now();
            let sent = tokio::time::timeout(
                self.cfg.timeout.0,
                self.exchange(m, &parts, client_host.as_ref(), &mut make),
            )
            .await;
            let resp = match sent {
                Err(_) => {
                    let e = ConnectError::Timeout {
                        phase: Phase::FirstByte,
                        after: self.cfg.timeout.0,
                        proxy: true,
                    };
                    self.pool.report(m, Outcome::UpstreamFault(e.clone()));
                    last_err = Some(format!("{}: {e}", m.name()));
                    if buffered.is_none() {
                        break;
                    }
                    continue;
                }
                Ok(Err(AttemptError::Connect(e))) => {
                    self.pool
                        .report(m, Outcome::of_error(as_backend_fault(e.clone())));
                    last_err = Some(format!("{}: {e}", m.name()));
                    if buffered.is_none() && stream.is_none() {
                        break;
                    }
                    continue;
                }
                Ok(Err(AttemptError::Sent(e))) => {
                    let ce = ConnectError::Reset {
                        phase: Phase::FirstByte,
                        proxy: true,
                    };
                    self.pool.report(m, Outcome::UpstreamFault(ce));
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
                self.pool.report(
                    m,
                    Outcome::UpstreamFault(ConnectError::ProxyStatus {
                        status,
                        reason: "backend".into(),
                    }),
                );
                last_err = Some(format!("{}: answered {status}", m.name()));
                continue;
            }
            self.pool.report(m, Outcome::Served(t0.elapsed()));
            tracing::info!(target: "access", kind = "reverse", client = %peer, method = %parts.method, path = %parts.uri, backend = m.name(), status, duration_ms = started.elapsed().as_millis() as u64, "request");
            return self
                .pass_on(&parts.method, resp, cache_key, cacheable_request)
                .await;
        }
        self.fallback(
            &parts.method,
            cacheable_request.then_some(cache_key.as_str()),
            last_err.unwrap_or_else(|| "no backend available".into()),
            peer,
            started,
        )
    }

    /// A body known to be small (or empty) is read whole, so that it can be
    /// sent again; a larger one streams.
    async fn read_body(
        &self,
        body: Incoming,
    ) -> Result<(Option<Bytes>, Option<Incoming>), Response<RespBody>> {
        let size = body.size_hint().exact();
        let buffer =
            body.is_end_stream() || size.is_some_and(|n| n as usize <= self.cfg.retry_body_limit);
        if !buffer {
            return Ok((None, Some(body)));
        }
        match body.collect().await {
            Ok(b) => Ok((Some(b.to_bytes()), None)),
            Err(e) => Err(text(
                StatusCode::BAD_REQUEST,
                &format!("proxyguard: cannot read request body: {e}"),
            )),
        }
    }

    /// The backend's answer to the client; a good GET is also remembered
    /// for the fallback.
    async fn pass_on(
        &self,
        method: &Method,
        resp: Response<Incoming>,
        cache_key: String,
        cacheable_request: bool,
    ) -> Response<RespBody> {
        let status = resp.status().as_u16();
        let (mut rp, rb) = resp.into_parts();
        strip_hop_by_hop(&mut rp.headers);
        let Some(fb) = &self.cfg.fallback else {
            return Response::from_parts(rp, incoming_body(rb));
        };
        let small = rb
            .size_hint()
            .exact()
            .is_some_and(|n| n as usize <= fb.max_body);
        if !(fb.cache_get.is_some()
            && *method == Method::GET
            && status == 200
            && cacheable_request
            && cache::response_may_be_stored(&rp.headers)
            && small)
        {
            return Response::from_parts(rp, incoming_body(rb));
        }
        match rb.collect().await {
            Ok(b) => {
                let b = b.to_bytes();
                self.cache
                    .put(cache_key, rp.status, rp.headers.clone(), b.clone());
                Response::from_parts(rp, full_body(b))
            }
            Err(e) => text(
                StatusCode::BAD_GATEWAY,
                &format!("proxyguard: backend body failed: {e}"),
            ),
        }
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

impl ReverseRoute {
    /// The backend pool (for status and tests).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The route's configuration (read-only, for status).
    pub fn config(&self) -> &RouteConfig {
        &self.cfg
    }

    /// The protocol spoken to a backend now (for status): `http1`, `h2c`,
    /// `h2`, `https` (not negotiated yet) or `http1 (fallback)`.
    pub fn backend_protocol(&self, m: &Member) -> &'static str {
        self.proto(m).describe()
    }

    /// The listener's TLS certificate (for reloads), if it has one.
    pub fn server_tls(&self) -> Option<Arc<crate::tls_acceptor::ServerTls>> {
        self.server_tls.clone()
    }
}
