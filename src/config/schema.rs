//! The configuration file as plain serde structs. Every key here is part of
//! the user interface: see docs/configuration.md.
//!
//! An optional key is an `Option` field: serde reads a missing one as `None`
//! and the TOML writer leaves `None` out, so such fields need no attributes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::duration::Dur;
use super::member::{one, ten_s, three};

/// The whole file. Unknown keys are errors, so typos are caught at load.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub listen: Vec<ListenConfig>,
    pub upstream: Vec<UpstreamConfig>,
    pub no_proxy: Vec<Spanned<String>>,
    /// Loopback targets (`localhost`, 127.0.0.0/8, ::1) always go direct, as
    /// in Go. Set false to send them through the upstreams too.
    pub bypass_loopback: bool,
    pub timeouts: TimeoutsConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub http: HttpConfig,
    /// Static name overrides, like curl's `--resolve`: `"origin.test" = "127.0.0.1"`.
    pub resolve: BTreeMap<String, Spanned<String>>,
    pub pool: PoolConfig,
    pub health: HealthConfig,
    pub breaker: BreakerConfig,
    pub admin: AdminConfig,
    pub alert: Vec<AlertConfig>,
    pub route: Vec<RouteConfig>,
    /// Destination ACL: see docs/security.md.
    pub acl: super::security::AclConfig,
    /// Fleet health through etcd: see docs/fleet.md.
    pub fleet: Option<super::fleet::FleetConfig>,
    /// Upstream sets learnt at run time: see docs/fleet.md.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<super::discovery::DiscoveryConfig>,
}

/// A reverse-proxy route: a local listener forwarding to backends in zones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub listen: Spanned<String>,
    /// Backends in this zone are preferred; others take traffic only when the
    /// local ones are out of service or all at `max_inflight`.
    pub local_zone: Option<String>,
    /// `direct`, or `pool` to reach backends through the upstream-proxy pool.
    #[serde(default = "via_direct")]
    pub via: String,
    /// Host header sent to backends: omitted = the backend's host, `"keep"` =
    /// the client's, anything else = that literal value.
    pub host: Option<String>,
    #[serde(default)]
    pub backend: Vec<BackendConfig>,
    pub sign: Option<RouteSign>,
    pub fallback: Option<RouteFallback>,
    #[serde(default = "three")]
    pub max_attempts: u32,
    /// Request bodies up to this size are buffered, so a failed attempt can be
    /// retried on another backend (and signed). Larger ones stream, no retry.
    #[serde(default = "retry_body")]
    pub retry_body_limit: usize,
    /// Extra CA certificates (PEM) trusted for https:// backends.
    pub ca_file: Option<String>,
    /// TLS server name override for https:// backends.
    pub sni: Option<String>,
    /// In-flight requests per backend beyond which it counts as overloaded (0 = no limit).
    #[serde(default)]
    pub max_inflight: usize,
    /// Time to the backend's response head.
    #[serde(default = "ten_s")]
    pub timeout: Dur,
    /// Treat every call as gRPC (also detected per request by
    /// `content-type: application/grpc`): see docs/protocols.md.
    #[serde(default)]
    pub grpc: bool,
    /// TLS on the route listener: certificate chain (PEM); ALPN offers h2
    /// and http/1.1. Needs `key`.
    pub cert: Option<Spanned<String>>,
    /// The certificate's private key (PEM).
    pub key: Option<Spanned<String>>,
}

fn via_direct() -> String {
    "direct".into()
}
fn retry_body() -> usize {
    64 * 1024
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub url: Spanned<String>,
    pub zone: Option<String>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default = "three")]
    pub max_fails: u32,
    #[serde(default = "ten_s")]
    pub fail_timeout: Dur,
    /// Active health check: `connect` (default) or `grpc`.
    pub check: Option<super::route_protocols::BackendCheck>,
}

/// Sign every forwarded request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSign {
    /// `apigw` (Alibaba Cloud API Gateway X-Ca-* HMAC).
    pub scheme: String,
    pub key: String,
    /// Environment variable holding the app secret (never in the file).
    pub secret_env: String,
    pub stage: Option<String>,
    /// `HmacSHA256` (default) or `HmacSHA1`.
    pub signature_method: Option<String>,
    /// Extra headers to sign besides X-Ca-*.
    #[serde(default)]
    pub headers: Vec<String>,
}

/// What to answer when no backend can.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFallback {
    /// Serve the last good response to the same GET, up to this age.
    pub cache_get: Option<Dur>,
    #[serde(default = "status_503")]
    pub status: u16,
    #[serde(default)]
    pub body: String,
    /// Largest response body kept in the cache.
    #[serde(default = "one_mib")]
    pub max_body: usize,
    #[serde(default = "thousand")]
    pub max_entries: usize,
    /// `http1`: speak HTTP/1.1 to a backend that fails over HTTP/2.
    pub protocol: Option<super::route_protocols::FallbackProtocol>,
}

fn status_503() -> u16 {
    503
}
fn one_mib() -> usize {
    1024 * 1024
}
fn thousand() -> usize {
    1000
}

/// The admin listener: /metrics, /status, /healthz, the status page, /reload.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    pub addr: Spanned<String>,
    /// Bearer token required for `POST /reload`, and for everything when the
    /// admin address is not loopback. Prefer `token_env`.
    pub token: Option<String>,
    /// Name of an environment variable holding the token.
    pub token_env: Option<String>,
    /// `Host` header values accepted besides the bind address and `localhost`.
    pub hosts: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            addr: Spanned::new(0..0, "127.0.0.1:9090".to_string()),
            token: None,
            token_env: None,
            hosts: Vec::new(),
        }
    }
}

/// One alert rule: on these events, run these actions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertConfig {
    pub on: Vec<String>,
    pub webhook: Option<String>,
    pub command: Option<String>,
    /// Also write the alert to the log (always on when no other action).
    #[serde(default)]
    pub log: bool,
    /// The same event (kind + upstream) fires at most once per cooldown.
    #[serde(default = "one_min")]
    pub cooldown: Dur,
    /// `error_rate`: failure share over `window` that fires the event.
    #[serde(default = "half")]
    pub threshold: f64,
    #[serde(default = "one_min")]
    pub window: Dur,
}

fn one_min() -> Dur {
    Dur::secs(60)
}
fn half() -> f64 {
    0.5
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            listen: vec![ListenConfig::default()],
            upstream: Vec::new(),
            no_proxy: Vec::new(),
            bypass_loopback: true,
            timeouts: TimeoutsConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            resolve: BTreeMap::new(),
            pool: PoolConfig::default(),
            health: HealthConfig::default(),
            breaker: BreakerConfig::default(),
            admin: AdminConfig::default(),
            alert: Vec::new(),
            route: Vec::new(),
            acl: Default::default(),
            fleet: None,
            discovery: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Socks5,
    #[default]
    Mixed,
    /// HTTP inside TLS (`curl --proxy https://…`); needs `cert` and `key`.
    Https,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    pub addr: Spanned<String>,
    #[serde(default)]
    pub protocol: Protocol,
    /// TLS listener (`https`, or `mixed` accepting TLS too): see config/listen_tls.rs.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addr: Spanned::new(0..0, "127.0.0.1:3128".to_string()),
            protocol: Protocol::Mixed,
            cert: None,
            key: None,
        }
    }
}

/// An `[[upstream]]` table: the name is required, the URL keeps its place
/// in the file for errors.
pub type UpstreamConfig = super::member::MemberConfig<String, Spanned<String>>;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// DNS + TCP connect to the upstream (or target when direct).
    pub connect: Dur,
    /// Proxy handshake: CONNECT reply or SOCKS5 negotiation.
    pub handshake: Dur,
    /// TLS handshake with an `https://` proxy.
    pub tls: Dur,
    /// Plain HTTP: from the request being written upstream to the response
    /// head. On expiry a safe request is retried on another upstream, an
    /// unsafe one gets 504; either way it counts as the upstream's timeout.
    pub response_head: Dur,
    /// Plain HTTP: an upstream that sends no body data for this long is cut
    /// off; the client sees a truncated response, never a complete-looking one.
    pub body_idle: Dur,
    /// Reading a client's request head or SOCKS5 greeting (slowloris guard).
    pub client_header: Dur,
    /// A tunnel with no traffic either way is closed.
    pub idle: Dur,
    /// On SIGINT/SIGTERM, how long live tunnels may continue.
    pub shutdown_grace: Dur,
    /// `Expect: 100-continue`: how long the request body waits for the
    /// upstream's `100 Continue` (or final answer) before it is sent anyway.
    pub expect_continue: Dur,
    /// SO_KEEPALIVE on client, upstream and tunnel sockets: keeps NAT and
    /// load-balancer entries alive and finds dead peers.
    pub tcp_keepalive: crate::tcp_keepalive::KeepaliveConfig,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            connect: Dur::secs(3),
            handshake: Dur::secs(5),
            tls: Dur::secs(5),
            response_head: Dur::secs(30),
            body_idle: Dur::secs(60),
            client_header: Dur::secs(10),
            idle: Dur::secs(300),
            shutdown_grace: Dur::secs(10),
            expect_continue: Dur::secs(1),
            tcp_keepalive: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent client connections across all listeners; more wait in the
    /// kernel's accept queue rather than being dropped.
    pub max_connections: usize,
    /// Largest request head accepted from a client (431 beyond).
    pub max_header_bytes: usize,
    /// Concurrent connections (tunnels included) from one client IP.
    pub max_connections_per_client: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
            max_connections_per_client: 256,
        }
    }
}

/// Inbound admission: who may use the listeners.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `user:password` pairs accepted as HTTP `Proxy-Authorization: Basic` and
    /// SOCKS5 username/password.
    pub users: Vec<Spanned<String>>,
    /// Client networks allowed to connect (CIDR or IP). Empty: any client that
    /// can reach the listener.
    pub allow: Vec<Spanned<String>>,
    /// Brute-force bans (docs/security.md): failures per IP within
    /// `fail_window` (default 5 in 1m) before a ban of `ban_for` (5m,
    /// doubling on repeat).
    pub max_failures: Option<u32>,
    pub fail_window: Option<Dur>,
    pub ban_for: Option<Dur>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Add `Via: 1.1 proxyguard` to forwarded plain-HTTP requests and
    /// their responses.
    pub via: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    Failover,
    RoundRobin,
    Weighted,
    LeastLatency,
    Sticky,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    #[default]
    Fail,
    Direct,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Checks {
    #[default]
    All,
    Active,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    pub strategy: Strategy,
    pub max_attempts: u32,
    pub connect_deadline: Dur,
    /// `"auto"`, `"off"` or a duration.
    pub race_after: String,
    /// Plain HTTP: a safe request still unanswered after this is also sent
    /// to a second upstream; the first answer wins. `"auto"` (from recent
    /// response times), `"off"` or a duration.
    pub hedge_after: String,
    /// How long a target that two upstreams could not reach is answered
    /// 502 at once, without trying upstreams again (`"0s"` turns it off).
    pub target_fail_cache: Dur,
    pub fallback: Fallback,
    pub checks: Checks,
    /// Retry backoff between rounds: full jitter in [0, min(cap, base·2^n)].
    pub backoff_base: Dur,
    pub backoff_cap: Dur,
    /// Largest share of the pool that passive ejection may remove (percent).
    pub max_ejection_percent: u32,
    /// Base ejection time; grows with each consecutive ejection.
    pub base_ejection: Dur,
    /// least_latency: an upstream must be this much faster to take traffic.
    pub latency_tolerance: Dur,
    /// Close established tunnels through an upstream when it is ejected.
    pub drain_on_eject: bool,
    /// Idle keep-alive connections kept per upstream and target.
    pub idle_per_host: usize,
    /// Idle keep-alive connections to origins (direct) live this long.
    pub idle_timeout: Dur,
    /// Idle keep-alive connections to upstream proxies are retired after
    /// this long, before a proxy, SLB or NAT on the path cuts them.
    pub upstream_idle: Dur,
    /// With no `[[upstream]]`: take the upstreams (and NO_PROXY) from the
    /// proxy environment variables, as zero-config does.
    pub upstreams_from_env: bool,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            strategy: Strategy::Failover,
            max_attempts: 3,
            connect_deadline: Dur::secs(5),
            race_after: "auto".into(),
            hedge_after: "auto".into(),
            target_fail_cache: Dur::secs(5),
            fallback: Fallback::Fail,
            checks: Checks::All,
            backoff_base: Dur::millis(20),
            backoff_cap: Dur::millis(500),
            max_ejection_percent: 100,
            base_ejection: Dur::secs(10),
            latency_tolerance: Dur::millis(20),
            drain_on_eject: false,
            idle_per_host: 256,
            idle_timeout: Dur::secs(60),
            upstream_idle: Dur::secs(10),
            upstreams_from_env: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CheckKind {
    #[default]
    Auto,
    Tcp,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    pub enabled: bool,
    /// Without `url`/`target`: `"auto"` makes the proxy answer a request
    /// itself (HTTP `OPTIONS *`, the SOCKS5 greeting); `"tcp"` only connects.
    pub check: CheckKind,
    pub interval: Dur,
    pub timeout: Dur,
    /// Optional URL fetched through the upstream; without it the check stops
    /// after the proxy handshake (to a target given by `target`).
    pub url: Option<String>,
    /// `host:port` the handshake-only check tunnels to (default: the proxy itself).
    pub target: Option<String>,
    pub expect_status: Vec<u16>,
    pub rise: u32,
    pub fall: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            enabled: true,
            check: CheckKind::Auto,
            interval: Dur::secs(5),
            timeout: Dur::secs(2),
            url: None,
            target: None,
            expect_status: Vec::new(),
            rise: 2,
            fall: 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (gobreaker: ReadyToTrip).
    pub failure_threshold: u32,
    /// Alternatively open when the failure ratio over `window` exceeds this
    /// (0 disables), once at least `min_requests` were seen.
    pub failure_ratio: f64,
    pub window: Dur,
    pub min_requests: u32,
    /// How long the breaker stays open (gobreaker: Timeout).
    pub open_for: Dur,
    /// Trial connections allowed while half-open (gobreaker: MaxRequests).
    pub half_open_trials: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 5,
            failure_ratio: 0.0,
            window: Dur::secs(10),
            min_requests: 20,
            open_for: Dur::secs(30),
            half_open_trials: 1,
        }
    }
}
