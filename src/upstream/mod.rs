//! Connectors: how to reach a target through one upstream (or directly).
//!
//! Every feature (serve, doctor, health checks, reverse mode) opens
//! connections through [`UpstreamSpec::connect_tunnel`] and
//! [`UpstreamSpec::connect_for_http`], so there is exactly one place that
//! speaks CONNECT or SOCKS5. Each phase has a hard wall-clock deadline that does not
//! depend on the operating system's TCP retry timers.

pub mod conn;
pub mod error;
pub mod happy_eyeballs;
pub mod http_connect;
pub mod resolve;
pub mod socks5;
pub mod target;
pub mod tls;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

pub use conn::Conn;
pub use error::{ConnectError, FaultClass, Phase, TargetFault};
pub use resolve::Resolver;
pub use target::{Host, Target};

/// Username and password, percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}:***)", self.username)
    }
}

/// How an upstream is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Direct,
    Http,
    Https,
    /// SOCKS5 with local name resolution.
    Socks5,
    /// SOCKS5 with the proxy resolving names.
    Socks5h,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Direct => "direct",
            Scheme::Http => "http",
            Scheme::Https => "https",
            Scheme::Socks5 => "socks5",
            Scheme::Socks5h => "socks5h",
        }
    }
}

/// Error parsing an upstream URL.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamUrlError {
    #[error("invalid URL: {0}")]
    Invalid(String),
    #[error("unsupported scheme `{0}` (expected http, https, socks5, socks5h or direct)")]
    Scheme(String),
    #[error("missing host")]
    NoHost,
    #[error("a proxy URL takes no path, query or fragment")]
    Path,
}

/// One upstream as configured: where it is and how to speak to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpec {
    pub name: String,
    pub scheme: Scheme,
    /// Proxy address (unused for direct).
    pub host: Host,
    pub port: u16,
    pub credentials: Option<Credentials>,
}

impl UpstreamSpec {
    pub fn direct(name: impl Into<String>) -> Self {
        UpstreamSpec {
            name: name.into(),
            scheme: Scheme::Direct,
            host: Host::Name(String::new()),
            port: 0,
            credentials: None,
        }
    }

    /// Parses `http://[user:pass@]host:port`, `https://…`, `socks5://…`,
    /// `socks5h://…` or `direct`. Userinfo is percent-decoded. A missing scheme
    /// means `http://`, as Go does.
    pub fn parse(name: &str, raw: &str) -> Result<Self, UpstreamUrlError> {
        let raw = raw.trim();
        if raw.eq_ignore_ascii_case("direct") || raw.eq_ignore_ascii_case("direct://") {
            return Ok(Self::direct(name));
        }
        let with_scheme = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        let url =
            url::Url::parse(&with_scheme).map_err(|e| UpstreamUrlError::Invalid(e.to_string()))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "socks5" => Scheme::Socks5,
            "socks5h" => Scheme::Socks5h,
            other => return Err(UpstreamUrlError::Scheme(other.to_string())),
        };
        if (url.path() != "/" && !url.path().is_empty())
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(UpstreamUrlError::Path);
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => Host::Name(d.to_ascii_lowercase()),
            Some(url::Host::Ipv4(ip)) => Host::Ip(ip.into()),
            Some(url::Host::Ipv6(ip)) => Host::Ip(ip.into()),
            None => return Err(UpstreamUrlError::NoHost),
        };
        if matches!(&host, Host::Name(n) if n.is_empty()) {
            return Err(UpstreamUrlError::NoHost);
        }
        let port = url.port().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
            _ => 1080,
        });
        let credentials = if url.username().is_empty() && url.password().is_none() {
            None
        } else {
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Some(Credentials {
                username: dec(url.username()),
                password: dec(url.password().unwrap_or("")),
            })
        };
        Ok(UpstreamSpec {
            name: name.to_string(),
            scheme,
            host,
            port,
            credentials,
        })
    }

    pub fn is_direct(&self) -> bool {
        self.scheme == Scheme::Direct
    }

    /// The URL with credentials redacted, safe for logs and status pages.
    pub fn redacted_url(&self) -> String {
        if self.is_direct() {
            return "direct".into();
        }
        let cred = match &self.credentials {
            // A lone user part is usually a token: hide it whole.
            Some(c) if c.password.is_empty() => "***@".to_string(),
            Some(c) => format!(
                "{}:***@",
                percent_encoding::utf8_percent_encode(
                    &c.username,
                    percent_encoding::NON_ALPHANUMERIC
                )
            ),
            None => String::new(),
        };
        format!(
            "{}://{}{}:{}",
            self.scheme.as_str(),
            cred,
            self.host,
            self.port
        )
    }

    /// The proxy's own `host:port` (for loop detection and display).
    pub fn proxy_target(&self) -> Target {
        Target::new(self.host.clone(), self.port)
    }
}

/// Per-phase deadlines.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// DNS + TCP connect.
    pub connect: Duration,
    /// Proxy handshake (CONNECT reply / SOCKS negotiation).
    pub handshake: Duration,
    /// TLS handshake (to an `https://` proxy, or doctor's target TLS).
    pub tls: Duration,
    /// Plain HTTP: from the request being sent to the response head.
    pub response_head: Duration,
    /// Plain HTTP: longest pause inside a response body before it is cut.
    pub body_idle: Option<Duration>,
    /// SO_KEEPALIVE on every socket opened or accepted (`None`: off).
    pub tcp_keepalive: Option<crate::tcp_keepalive::TcpKeepalive>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(3),
            handshake: Duration::from_secs(5),
            tls: Duration::from_secs(5),
            response_head: Duration::from_secs(30),
            body_idle: Some(Duration::from_secs(60)),
            tcp_keepalive: Some(Default::default()),
        }
    }
}

/// Receives phase timings. serve uses a cheap one; doctor records details.
pub trait PhaseObserver: Send {
    fn phase(&mut self, _phase: Phase, _took: Duration, _detail: &str) {}
    /// The peer address a TCP connection went to.
    fn connected(&mut self, _addr: SocketAddr) {}
}

/// An observer that ignores everything.
pub struct NoopObserver;
impl PhaseObserver for NoopObserver {}

/// Everything a connector needs besides the upstream itself.
#[derive(Clone)]
pub struct ConnectContext {
    pub resolver: Resolver,
    pub timeouts: Timeouts,
    pub tls: Arc<rustls::ClientConfig>,
}

impl ConnectContext {
    pub fn new(resolver: Resolver, timeouts: Timeouts) -> Self {
        ConnectContext {
            resolver,
            timeouts,
            tls: tls::default_client_config(),
        }
    }
}

/// A connection for plain-HTTP forwarding.
pub struct HttpConn {
    pub conn: Conn,
    /// True when talking to an HTTP proxy: send absolute-form requests and
    /// add `proxy_authorization`.
    pub absolute_form: bool,
    pub proxy_authorization: Option<String>,
}

/// Opens TCP to `host:port` under `ctx.timeouts.connect` (DNS included).
/// Several addresses are raced the Happy Eyeballs v2 way (see
/// [`happy_eyeballs`]): a silent address costs 250 ms, not the budget.
pub async fn tcp_connect(
    ctx: &ConnectContext,
    host: &Host,
    port: u16,
    proxy: bool,
    obs: &mut dyn PhaseObserver,
) -> Result<TcpStream, ConnectError> {
    let start = Instant::now();
    let budget = ctx.timeouts.connect;
    let addrs = ctx.resolver.resolve(host, port, budget, proxy).await?;
    if !proxy {
        crate::acl::check_resolved(&addrs).map_err(ConnectError::Prohibited)?;
    }
    if matches!(host, Host::Name(_)) {
        obs.phase(Phase::Dns, start.elapsed(), &format!("{addrs:?}"));
    }
    let tcp_start = Instant::now();
    let remaining = budget.saturating_sub(start.elapsed());
    let ordered = happy_eyeballs::interleave(&addrs);
    let attempt = |addr: SocketAddr| async move {
        TcpStream::connect(addr)
            .await
            .map(|s| (s, addr))
            .map_err(|e| ConnectError::from_io(&e, Phase::Tcp, &addr.to_string(), proxy))
    };
    let raced = happy_eyeballs::race(&ordered, happy_eyeballs::STAGGER, attempt);
    match tokio::time::timeout(remaining, raced).await {
        Ok(Ok((s, addr))) => {
            let _ = s.set_nodelay(true);
            crate::tcp_keepalive::apply(ctx.timeouts.tcp_keepalive, &s);
            obs.connected(addr);
            obs.phase(Phase::Tcp, tcp_start.elapsed(), &addr.to_string());
            Ok(s)
        }
        Ok(Err(Some(e))) => Err(e),
        Ok(Err(None)) | Err(_) => Err(ConnectError::timeout(Phase::Tcp, budget, proxy)),
    }
}

/// Runs `fut` under `limit`, mapping expiry to a timeout in `phase`.
pub async fn within<T>(
    limit: Duration,
    phase: Phase,
    proxy: bool,
    fut: impl std::future::Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::timeout(phase, limit, proxy)),
    }
}

impl UpstreamSpec {
    /// Connects to the proxy itself: TCP, then TLS for `https://` proxies.
    pub async fn connect_proxy(
        &self,
        ctx: &ConnectContext,
        obs: &mut dyn PhaseObserver,
    ) -> Result<Conn, ConnectError> {
        let tcp = tcp_connect(ctx, &self.host, self.port, true, obs).await?;
        if self.scheme != Scheme::Https {
            return Ok(Conn::tcp(tcp));
        }
        let start = Instant::now();
        let server_name =
            rustls_pki_types::ServerName::try_from(self.host.bare()).map_err(|e| {
                ConnectError::ProxyProtocol {
                    detail: format!("bad TLS server name {}: {e}", self.host),
                }
            })?;
        let connector = tokio_rustls::TlsConnector::from(ctx.tls.clone());
        let tls = within(ctx.timeouts.tls, Phase::ProxyTls, true, async {
            connector
                .connect(server_name, tcp)
                .await
                .map_err(|e| tls::classify(&e, &self.host.bare(), true))
        })
        .await?;
        obs.phase(Phase::ProxyTls, start.elapsed(), "");
        Ok(Conn {
            io: conn::Io::Tls(Box::new(tls)),
            prefix: None,
        })
    }

    /// Opens a byte tunnel to `target` through this upstream.
    pub async fn connect_tunnel(
        &self,
        target: &Target,
        ctx: &ConnectContext,
        obs: &mut dyn PhaseObserver,
    ) -> Result<Conn, ConnectError> {
        match self.scheme {
            Scheme::Direct => {
                let s = tcp_connect(ctx, &target.host, target.port, false, obs).await?;
                Ok(Conn::tcp(s))
            }
            Scheme::Http | Scheme::Https => {
                let mut conn = self.connect_proxy(ctx, obs).await?;
                let start = Instant::now();
                let prefix = within(ctx.timeouts.handshake, Phase::ProxyHandshake, true, async {
                    http_connect::handshake(&mut conn, target, self.credentials.as_ref()).await
                })
                .await?;
                obs.phase(Phase::ProxyHandshake, start.elapsed(), "200");
                conn.prefix = prefix;
                Ok(conn)
            }
            Scheme::Socks5 | Scheme::Socks5h => {
                let mut conn = self.connect_proxy(ctx, obs).await?;
                let start = Instant::now();
                // socks5:// resolves the target locally; socks5h:// lets the proxy.
                let dest = match (&target.host, self.scheme) {
                    (Host::Name(_), Scheme::Socks5) => {
                        let addrs = ctx
                            .resolver
                            .resolve(&target.host, target.port, ctx.timeouts.connect, false)
                            .await?;
                        crate::acl::check_resolved(&addrs).map_err(ConnectError::Prohibited)?;
                        Target::new(Host::Ip(addrs[0].ip()), target.port)
                    }
                    _ => target.clone(),
                };
                within(ctx.timeouts.handshake, Phase::ProxyHandshake, true, async {
                    socks5::handshake(&mut conn, &dest, self.credentials.as_ref()).await
                })
                .await?;
                obs.phase(Phase::ProxyHandshake, start.elapsed(), "0x00");
                Ok(conn)
            }
        }
    }

    /// A liveness probe that needs the proxy process itself to answer, so a
    /// proxy that accepts TCP but never answers (hung, or a full accept queue
    /// behind a load balancer) is found down. HTTP(S) proxies get
    /// `OPTIONS * HTTP/1.0` without a Host — squid, tinyproxy and privoxy all
    /// answer it themselves with a status line and contact nobody; any status
    /// but 407 is alive. SOCKS5 proxies must answer the method negotiation
    /// (and auth). `tcp_only` stops after TCP (and TLS).
    pub async fn probe(
        &self,
        ctx: &ConnectContext,
        tcp_only: bool,
        obs: &mut dyn PhaseObserver,
    ) -> Result<String, ConnectError> {
        if self.is_direct() {
            return Ok("direct".into());
        }
        let mut conn = self.connect_proxy(ctx, obs).await?;
        if tcp_only {
            return Ok("tcp connect ok".into());
        }
        within(ctx.timeouts.handshake, Phase::ProxyHandshake, true, async {
            match self.scheme {
                Scheme::Socks5 | Scheme::Socks5h => {
                    socks5::negotiate_auth(&mut conn, self.credentials.as_ref()).await?;
                    Ok("SOCKS5 negotiation ok".to_string())
                }
                _ => {
                    let head =
                        http_connect::options_probe(&mut conn, self.credentials.as_ref()).await?;
                    Ok(format!("OPTIONS * answered {}", head.status))
                }
            }
        })
        .await
    }

    /// Opens a connection suitable for sending plain HTTP requests to `target`:
    /// to the proxy itself for HTTP(S) proxies (absolute-form), else a tunnel.
    pub async fn connect_for_http(
        &self,
        target: &Target,
        ctx: &ConnectContext,
        obs: &mut dyn PhaseObserver,
    ) -> Result<HttpConn, ConnectError> {
        match self.scheme {
            Scheme::Http | Scheme::Https => Ok(HttpConn {
                conn: self.connect_proxy(ctx, obs).await?,
                absolute_form: true,
                proxy_authorization: self.credentials.as_ref().map(http_connect::basic_auth),
            }),
            _ => Ok(HttpConn {
                conn: self.connect_tunnel(target, ctx, obs).await?,
                absolute_form: false,
                proxy_authorization: None,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upstream_urls() {
        let u = UpstreamSpec::parse("a", "http://us%40er:p%3Ass@proxy.example:8080").unwrap();
        assert_eq!(u.scheme, Scheme::Http);
        assert_eq!(u.port, 8080);
        let c = u.credentials.clone().unwrap();
        assert_eq!(c.username, "us@er");
        assert_eq!(c.password, "p:ss");
        assert_eq!(u.redacted_url(), "http://us%40er:***@proxy.example:8080");
        assert!(!format!("{u:?}").contains("p:ss"));
        let u = UpstreamSpec::parse("b", "proxy.example:3128").unwrap();
        assert_eq!(u.scheme, Scheme::Http);
        let u = UpstreamSpec::parse("c", "socks5h://[::1]").unwrap();
        assert_eq!(u.scheme, Scheme::Socks5h);
        assert_eq!(u.port, 1080);
        assert_eq!(
            UpstreamSpec::parse("d", "https://p.example").unwrap().port,
            443
        );
        assert!(UpstreamSpec::parse("e", "direct").unwrap().is_direct());
        assert!(matches!(
            UpstreamSpec::parse("f", "ftp://x:1"),
            Err(UpstreamUrlError::Scheme(_))
        ));
        assert!(matches!(
            UpstreamSpec::parse("g", "http://x:1/path"),
            Err(UpstreamUrlError::Path)
        ));
        assert!(UpstreamSpec::parse("h", "http://:80").is_err());
    }
}
