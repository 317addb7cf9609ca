//! Reverse-proxy mode: a local listener forwarding to backends across zones
//! with the same pool machinery as upstream proxies (the zone order as a
//! pool strategy, the attempt engine, passive ejection, breakers, active
//! probes, outcomes reported through `Pool::report`), safe retries
//! (connection failures always; a failed exchange only with the body held
//! in full; 502/503/504 only for idempotent requests with the body held),
//! optional signing, and a fallback (last good GET, or a static answer).
//!
//! Protocols (docs/protocols.md): HTTP/1.1 and h2c on the listener,
//! HTTP/1.1 or HTTP/2 to each backend with a per-backend fallback to
//! HTTP/1.1 (`fallback`), gRPC-aware retries and deadlines (`grpc`),
//! WebSocket and other upgrades (`upgrade`).

mod answer;
mod attempt;
mod backend;
pub mod cache;
mod fallback;
mod grpc;
mod headers;
mod health;
mod listener;
mod plain;
mod prefix;
mod replay;
mod upgrade;
mod watch;

pub use fallback::RETRY_H2_AFTER;
pub use grpc::{call_deadline, encode_grpc_timeout, is_grpc, parse_grpc_timeout};
pub use health::{health_request, health_status};
pub use listener::start;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::route_protocols::{BackendCheck, BackendProtocol};
use crate::config::schema::RouteConfig;
use crate::config::{Applies, UpstreamEntry};
use crate::forward::strip_hop_by_hop;
use crate::http_client::{IdlePool, SharedConns};
use crate::pool::{Member, Pool};
use crate::route::Router;
use crate::shutdown::Shutdown;
use crate::upstream::{ConnectContext, UpstreamSpec};

use backend::TlsConfigs;
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
    /// A response body it cut lately: it goes behind the others.
    cut: watch::RecentCut,
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
    cache: cache::Cache,
    /// Recent response-head latencies, for `hedge_after = "auto"`.
    heads: crate::config::adaptive::HedgeWindow,
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
                    cut: watch::RecentCut::new(b.fail_timeout.0),
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
        let mut pool_cfg = all.pool.clone();
        pool_cfg.max_attempts = cfg.max_attempts;
        let idle_timeout = pool_cfg.idle_timeout.0;
        Ok(ReverseRoute {
            cfg: cfg.clone(),
            pool: Pool::new(entries, pool_cfg, all.breaker.clone()),
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
                cut: watch::RecentCut::new(Duration::ZERO),
            },
            cache: cache::Cache::new(cfg.fallback.as_ref().map(|f| f.max_entries).unwrap_or(0)),
            heads: Default::default(),
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
