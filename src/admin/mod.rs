//! The admin listener: `GET /metrics` (Prometheus), `GET /status` (JSON),
//! `GET /healthz`, `GET /` (the status page), `POST /reload` (token).

pub mod alerts;
pub mod guard;
pub mod metrics;
pub mod status;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::route::Router;
use crate::shutdown::Shutdown;

const PAGE: &str = include_str!("page.html");

/// Installs the Prometheus recorder once per process (see [`metrics::handle`]).
pub fn metrics_handle() -> Option<PrometheusHandle> {
    metrics::handle()
}

/// Shared admin state.
pub struct Admin {
    pub router: Arc<Router>,
    pub history: status::History,
    pub started: Instant,
    pub listeners: Vec<String>,
    pub token: Option<String>,
    pub config_path: Option<PathBuf>,
    pub reloader: Option<Arc<dyn Fn() -> Result<(), String> + Send + Sync>>,
    /// Reverse routes (listen address, route), for /status and /metrics.
    pub routes: Vec<(SocketAddr, Arc<crate::reverse::ReverseRoute>)>,
    /// Host/Origin/token rules and the ban list shown in `/status`.
    pub guard: guard::AdminGuard,
}

impl Admin {
    /// The `/status` document (also decides `/healthz`).
    fn snapshot(&self) -> status::Status {
        status::build(
            &self.router,
            &self.routes,
            &self.history,
            self.started,
            &self.listeners,
        )
    }

    /// Every pool: the upstream pool, then each reverse route's backends.
    fn pools(&self) -> impl Iterator<Item = &crate::pool::Pool> {
        std::iter::once(&self.router.pool).chain(self.routes.iter().map(|(_, r)| r.pool()))
    }
}

fn resp(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, http::HeaderValue::from_static(ctype));
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    r
}

fn authorized(admin: &Admin, req: &Request<Incoming>) -> bool {
    let Some(tok) = &admin.token else {
        return false;
    };
    let got = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    got.len() == tok.len()
        && got
            .bytes()
            .zip(tok.bytes())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0
}

async fn handle(
    req: Request<Incoming>,
    admin: Arc<Admin>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut r = route(req, admin, peer).await;
    guard::secure_headers(r.headers_mut());
    Ok(r)
}

/// `/status` with the active inbound-auth bans added.
fn status_json(admin: &Admin) -> Vec<u8> {
    let s = admin.snapshot();
    let mut v = serde_json::to_value(&s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "auth_bans".into(),
            serde_json::to_value(admin.guard.bans.active()).unwrap_or_default(),
        );
    }
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

async fn route(
    req: Request<Incoming>,
    admin: Arc<Admin>,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let token_ok = authorized(&admin, &req);
    // Off loopback, everything needs the token.
    if !peer.ip().is_loopback() && !token_ok {
        return resp(StatusCode::UNAUTHORIZED, "text/plain", "token required\n");
    }
    if let Err(e) = admin.guard.check(req.method(), req.headers(), token_ok) {
        let status = match e {
            guard::Refusal::Token => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        };
        tracing::warn!(client = %peer, method = %req.method(), path = req.uri().path(), error = %e, "admin request refused");
        return resp(status, "text/plain", format!("{e}\n"));
    }
    let path = req.uri().path().to_string();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/metrics") => match metrics_handle() {
            Some(h) => {
                metrics::seed_pools(admin.pools());
                resp(StatusCode::OK, "text/plain; version=0.0.4", h.render())
            }
            None => resp(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "metrics recorder unavailable\n",
            ),
        },
        (Method::GET, "/status") => resp(StatusCode::OK, "application/json", status_json(&admin)),
        (Method::GET, "/healthz") => {
            let s = admin.snapshot();
            if s.can_serve {
                resp(StatusCode::OK, "text/plain", "ok\n")
            } else {
                resp(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "no upstream can serve\n",
                )
            }
        }
        (Method::GET, "/") | (Method::GET, "/index.html") => {
            resp(StatusCode::OK, "text/html; charset=utf-8", PAGE)
        }
        (Method::POST, "/reload") => {
            if !authorized(&admin, &req) {
                resp(
                    StatusCode::UNAUTHORIZED,
                    "text/plain",
                    "POST /reload needs Authorization: Bearer <[admin] token>\n",
                )
            } else {
                match &admin.reloader {
                    None => resp(
                        StatusCode::CONFLICT,
                        "text/plain",
                        "no configuration file to reload (zero-config)\n",
                    ),
                    Some(r) => match r() {
                        Ok(()) => resp(StatusCode::OK, "text/plain", "reloaded\n"),
                        Err(e) => resp(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "text/plain",
                            format!("rejected, old configuration kept: {e}\n"),
                        ),
                    },
                }
            }
        }
        _ => resp(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /, /status, /metrics, /healthz\n",
        ),
    }
}

/// Serves the admin API until shutdown; also runs the history sampler.
pub async fn serve(listener: tokio::net::TcpListener, admin: Arc<Admin>, shutdown: Shutdown) {
    metrics::seed_pools(admin.pools());
    let sampler = admin.clone();
    let sd = shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(status::SAMPLE_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => sampler.history.sample(sampler.pools()),
                _ = sd.triggered() => return,
            }
        }
    });
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.triggered() => return,
        };
        let admin = admin.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, admin.clone(), peer));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
