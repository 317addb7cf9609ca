//! Loading and validating configuration once, into a typed [`Config`].
//! Errors name the line, column and field, and say what was expected.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;
use toml::Spanned;

use super::env::ProxyEnv;
use super::noproxy::NoProxy;
use super::schema::{
    AlertConfig, BreakerConfig, FileConfig, HealthConfig, ListenConfig, PoolConfig, Protocol,
    RouteConfig,
};
use super::sections;
use crate::upstream::{Credentials, Host, Timeouts, UpstreamSpec};

/// A configuration error with its location.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.render())]
pub struct ConfigError {
    pub source_name: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    fn render(&self) -> String {
        let mut s = self.source_name.clone();
        if let (Some(l), Some(c)) = (self.line, self.column) {
            s.push_str(&format!(":{l}:{c}"));
        }
        s.push_str(": ");
        if let Some(f) = &self.field {
            s.push_str(&format!("`{f}`: "));
        }
        s.push_str(&self.message);
        s
    }
}

/// Which traffic an upstream serves (zero-config may split http and https).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applies {
    /// Plain-HTTP forwarding (Go: `HTTP_PROXY`).
    pub plain: bool,
    /// Tunnels: CONNECT and SOCKS5 (Go: `HTTPS_PROXY`).
    pub tunnel: bool,
}

impl Applies {
    pub const ALL: Applies = Applies {
        plain: true,
        tunnel: true,
    };
}

/// One validated upstream with its pool settings (equality is the pool
/// member's identity across reloads).
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamEntry {
    pub spec: UpstreamSpec,
    pub zone: Option<String>,
    pub priority: i32,
    pub weight: u32,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    pub applies: Applies,
    /// Where it came from: `config` or the environment variable name.
    pub origin: String,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    pub protocol: Protocol,
    /// Certificate and key of a TLS listener (validated at load).
    pub tls: Option<crate::tls_acceptor::TlsFiles>,
}

/// Inbound admission settings shared by every listener.
#[derive(Debug, Clone, Default)]
pub struct AdmissionSettings {
    pub users: Vec<Credentials>,
    pub allow: Vec<IpNet>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub upstreams: Vec<UpstreamEntry>,
    pub no_proxy: NoProxy,
    pub no_proxy_raw: Vec<String>,
    pub bypass_loopback: bool,
    pub timeouts: Timeouts,
    pub client_header_timeout: Duration,
    pub idle_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub admission: AdmissionSettings,
    pub resolve: HashMap<String, Vec<IpAddr>>,
    pub via: bool,
    pub admin_addr: Option<SocketAddr>,
    pub admin_token: Option<String>,
    /// ACL, bans, per-client limit, admin hardening (config/security.rs).
    pub security: super::security::Security,
    /// `[fleet]` (config/fleet.rs), when configured.
    pub fleet: Option<super::fleet::FleetSettings>,
    /// `[timeouts] expect_continue`.
    pub expect_continue: Duration,
    /// `[pool]`, `[breaker]`, `[health]`, `[[alert]]` and `[[route]]`, as
    /// validated: what run time reads.
    pub pool: PoolConfig,
    pub breaker: BreakerConfig,
    pub health: HealthConfig,
    pub alerts: Vec<AlertConfig>,
    pub routes: Vec<RouteConfig>,
    /// The file as read: for `check` to print (redacted) and for a reload
    /// to name the sections that changed. Run time reads the typed fields.
    pub as_read: FileConfig,
    /// `path` or `environment`.
    pub source_name: String,
    /// The file to re-read on reload (None for zero-config).
    pub path: Option<std::path::PathBuf>,
    /// `[[discovery]]` sources (config/discovery.rs).
    pub discovery: Vec<super::discovery::Source>,
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|i| offset - i).unwrap_or(offset + 1);
    (line, col)
}

/// The `[table].key` a given line belongs to, for messages.
fn field_at(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let this = lines.get(line.checked_sub(1)?)?;
    let key = this.split('=').next()?.trim();
    let key = if this.contains('=') && !key.is_empty() {
        Some(key.to_string())
    } else {
        None
    };
    let table = lines[..line - 1].iter().rev().find_map(|l| {
        let t = l.trim();
        t.starts_with('[')
            .then(|| t.trim_matches(|c| c == '[' || c == ']').trim().to_string())
    });
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

pub(super) struct Ctx<'a> {
    text: &'a str,
    source: &'a str,
}

impl Ctx<'_> {
    /// The name errors carry: the config file's path, or a label.
    pub(super) fn source(&self) -> &str {
        self.source
    }
    pub(super) fn err<T>(
        &self,
        span: Option<std::ops::Range<usize>>,
        field: &str,
        msg: String,
    ) -> Result<T, ConfigError> {
        let (line, column) = match span {
            Some(s) if !(s.start == 0 && s.end == 0) => {
                let (l, c) = line_col(self.text, s.start);
                (Some(l), Some(c))
            }
            _ => super::locate::key_position(self.text, field)
                .map_or((None, None), |(l, c)| (Some(l), Some(c))),
        };
        Err(ConfigError {
            source_name: self.source.to_string(),
            line,
            column,
            field: Some(field.to_string()),
            message: msg,
        })
    }
    pub(super) fn at<T>(
        &self,
        s: &Spanned<String>,
        field: &str,
        msg: String,
    ) -> Result<T, ConfigError> {
        self.err(Some(s.span()), field, msg)
    }
}

impl Config {
    /// Loads and validates a TOML file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = super::security::read_config_file(path).map_err(|message| ConfigError {
            source_name: path.display().to_string(),
            line: None,
            column: None,
            field: None,
            message,
        })?;
        let mut c = Self::from_toml(&text, &path.display().to_string())?;
        c.path = Some(path.to_path_buf());
        c.apply_upstreams_from_env(&ProxyEnv::from_process_env())?;
        Ok(c)
    }

    /// Parses and validates TOML text; `source` names it in errors.
    pub fn from_toml(text: &str, source: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| {
            let (line, column) = match e.span() {
                Some(s) => {
                    let (l, c) = line_col(text, s.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            ConfigError {
                source_name: source.to_string(),
                line,
                column,
                field: line.and_then(|l| field_at(text, l)),
                message: {
                    let m = e.message().trim().to_string();
                    if m.contains("unknown field `no_proxy`") || m.contains("unknown field `bypass_loopback`") {
                        format!("{m} (top-level keys such as `no_proxy` must come before the first [table] in TOML)")
                    } else {
                        m
                    }
                },
            }
        })?;
        Self::validate(file, text, source)
    }

    /// The zero-config configuration: defaults plus the proxy environment.
    pub fn from_env(env: &ProxyEnv) -> Result<Config, ConfigError> {
        let mut cfg = Self::validate(FileConfig::default(), "", "environment")?;
        cfg.upstreams = env_upstreams(env)?;
        cfg.no_proxy = env.no_proxy.clone();
        cfg.no_proxy_raw = env
            .no_proxy_raw
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        cfg.check_loops()?;
        Ok(cfg)
    }

    fn validate(file: FileConfig, text: &str, source: &str) -> Result<Config, ConfigError> {
        let cx = Ctx { text, source };
        if file.listen.is_empty() {
            return cx.err(None, "listen", "at least one [[listen]] is required".into());
        }
        let listeners = file
            .listen
            .iter()
            .map(|l| parse_listen(&cx, l))
            .collect::<Result<Vec<_>, _>>()?;
        let upstreams = sections::upstreams(&cx, &file)?;
        let resolve = sections::resolve(&cx, &file)?;
        let admission = sections::admission(&cx, &file)?;
        sections::limits(&cx, &file)?;
        sections::pool(&cx, &file)?;
        sections::health(&cx, &file)?;
        let (admin_addr, admin_token) = sections::admin(&cx, &file)?;
        let security = super::security::validate(&file, admin_token.as_deref(), source)?;
        if let Some(a) = admin_addr {
            if !a.ip().is_loopback() && admin_token.is_none() {
                return cx.at(&file.admin.addr, "admin.addr", format!("{a} is not loopback: set [admin] token_env (or token) so the admin API is not open to the network"));
            }
        }
        sections::alerts(&cx, &file)?;
        sections::routes(&cx, &file, &admission.allow)?;
        sections::no_open_proxy(&cx, &file, &listeners, &admission)?;
        let fleet = super::fleet::validate(&cx, &file)?;
        let discovery = super::discovery::validate(&cx, &file)?;
        let t = &file.timeouts;
        let cfg = Config {
            listeners,
            upstreams,
            no_proxy: NoProxy::parse(file.no_proxy.iter().map(|s| s.get_ref().clone())),
            no_proxy_raw: file.no_proxy.iter().map(|s| s.get_ref().clone()).collect(),
            bypass_loopback: file.bypass_loopback,
            timeouts: Timeouts {
                connect: t.connect.0,
                handshake: t.handshake.0,
                tls: t.tls.0,
                response_head: t.response_head.0,
                body_idle: Some(t.body_idle.0),
                // Validated above.
                tcp_keepalive: t.tcp_keepalive.settings().unwrap_or_default(),
            },
            client_header_timeout: t.client_header.0,
            idle_timeout: t.idle.0,
            shutdown_grace: t.shutdown_grace.0,
            max_connections: file.limits.max_connections,
            max_header_bytes: file.limits.max_header_bytes,
            admission,
            resolve,
            via: file.http.via,
            admin_addr,
            admin_token,
            security,
            fleet,
            expect_continue: t.expect_continue.0,
            pool: file.pool.clone(),
            breaker: file.breaker.clone(),
            health: file.health.clone(),
            alerts: file.alert.clone(),
            routes: file.route.clone(),
            as_read: file,
            source_name: source.to_string(),
            path: None,
            discovery,
        };
        cfg.check_loops()?;
        Ok(cfg)
    }

    /// Replaces the listeners (CLI `--listen`), re-checking safety and loops.
    pub fn set_listeners(&mut self, addrs: &[SocketAddr]) -> Result<(), ConfigError> {
        self.listeners = addrs
            .iter()
            .map(|a| Listener {
                addr: *a,
                protocol: Protocol::Mixed,
                tls: None,
            })
            .collect();
        for l in &self.listeners {
            if !l.addr.ip().is_loopback()
                && self.admission.users.is_empty()
                && self.admission.allow.is_empty()
            {
                return Err(ConfigError {
                    source_name: "--listen".into(),
                    line: None,
                    column: None,
                    field: Some("listen".into()),
                    message: format!("{} is not loopback and no inbound auth or allow-list is configured (set [auth] users/allow in a config file)", l.addr),
                });
            }
        }
        self.check_loops()
    }

    /// Refuses an upstream that points back at one of our own listeners: a
    /// forwarding loop (zero-config picks up `HTTP_PROXY`, which users may
    /// have pointed at proxyguard itself).
    pub fn check_loops(&self) -> Result<(), ConfigError> {
        for u in &self.upstreams {
            if u.spec.is_direct() {
                continue;
            }
            let ips: Vec<IpAddr> = match &u.spec.host {
                Host::Ip(ip) => vec![*ip],
                Host::Name(n) if n == "localhost" => vec![
                    "127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1])),
                    IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                ],
                Host::Name(n) => self.resolve.get(n).cloned().unwrap_or_default(),
            };
            for l in &self.listeners {
                let same_port = l.addr.port() == u.spec.port;
                let same_ip = ips.iter().any(|ip| {
                    *ip == l.addr.ip()
                        || (l.addr.ip().is_unspecified()
                            && (ip.is_loopback() || ip.is_unspecified()))
                });
                if same_port && same_ip {
                    return Err(ConfigError {
                        source_name: self.source_name.clone(),
                        line: None,
                        column: None,
                        field: Some(format!("upstream {:?} ({})", u.spec.name, u.origin)),
                        message: format!(
                            "{} points at proxyguard's own listener {}: this would forward in a loop. \
                             Point it at the real proxy, or unset it when starting proxyguard",
                            u.spec.redacted_url(),
                            l.addr
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The effective configuration as TOML, with secrets redacted.
    pub fn effective_toml(&self) -> String {
        let mut f = self.as_read.clone();
        super::redact::redact_file(&mut f);
        f.listen = self
            .listeners
            .iter()
            .map(|l| ListenConfig {
                addr: Spanned::new(0..0, l.addr.to_string()),
                protocol: l.protocol,
                cert: l
                    .tls
                    .as_ref()
                    .map(|t| Spanned::new(0..0, t.cert.display().to_string())),
                key: l
                    .tls
                    .as_ref()
                    .map(|t| Spanned::new(0..0, t.key.display().to_string())),
            })
            .collect();
        f.upstream = self
            .upstreams
            .iter()
            .map(|u| super::schema::UpstreamConfig {
                name: u.spec.name.clone(),
                url: Spanned::new(0..0, u.spec.redacted_url()),
                zone: u.zone.clone(),
                priority: u.priority,
                weight: u.weight,
                max_fails: u.max_fails,
                fail_timeout: super::duration::Dur(u.fail_timeout),
            })
            .collect();
        f.no_proxy = self
            .no_proxy_raw
            .iter()
            .map(|s| Spanned::new(0..0, s.clone()))
            .collect();
        f.auth.users = f
            .auth
            .users
            .iter()
            .map(|u| {
                let name = u.get_ref().split(':').next().unwrap_or("").to_string();
                Spanned::new(0..0, format!("{name}:***"))
            })
            .collect();
        toml::to_string_pretty(&f).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn parse_listen(cx: &Ctx<'_>, l: &ListenConfig) -> Result<Listener, ConfigError> {
    match l.addr.get_ref().trim().parse::<SocketAddr>() {
        Ok(addr) => Ok(Listener {
            addr,
            protocol: l.protocol,
            tls: super::listen_tls::validate(cx, l)?,
        }),
        Err(_) => cx.at(&l.addr, "listen.addr", format!(
            "{:?} is not a socket address; expected IP:port like \"127.0.0.1:3128\" or \"[::1]:3128\"",
            l.addr.get_ref()
        )),
    }
}

fn env_upstreams(env: &ProxyEnv) -> Result<Vec<UpstreamEntry>, ConfigError> {
    let mk = |p: &super::env::EnvProxy, applies: Applies| -> Result<UpstreamEntry, ConfigError> {
        let spec = UpstreamSpec::parse(p.var, &p.url).map_err(|e| ConfigError {
            source_name: "environment".into(),
            line: None,
            column: None,
            field: Some(p.var.to_string()),
            message: format!("{e} (value {})", super::redact::redact(&p.raw)),
        })?;
        Ok(UpstreamEntry {
            applies,
            ..UpstreamEntry::with_defaults(spec, p.var)
        })
    };
    let mut out = Vec::new();
    match (&env.http, &env.https) {
        (Some(h), Some(s)) if h.url == s.url => out.push(mk(s, Applies::ALL)?),
        (h, s) => {
            if let Some(s) = s {
                out.push(mk(
                    s,
                    Applies {
                        plain: false,
                        tunnel: true,
                    },
                )?);
            }
            if let Some(h) = h {
                out.push(mk(
                    h,
                    Applies {
                        plain: true,
                        tunnel: false,
                    },
                )?);
            }
        }
    }
    // Traffic a variable does not cover goes direct, as in Go.
    let plain = out.iter().any(|u| u.applies.plain);
    let tunnel = out.iter().any(|u| u.applies.tunnel);
    if !(plain && tunnel) {
        out.push(UpstreamEntry {
            applies: Applies {
                plain: !plain,
                tunnel: !tunnel,
            },
            ..UpstreamEntry::with_defaults(UpstreamSpec::direct("direct"), "default")
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let c = Config::from_toml("", "t").unwrap();
        assert_eq!(c.listeners[0].addr.to_string(), "127.0.0.1:3128");
        assert_eq!(c.listeners[0].protocol, Protocol::Mixed);
        assert!(c.upstreams.is_empty());
    }

    #[test]
    fn errors_name_line_column_field() {
        let e = Config::from_toml("[timeouts]\nconnect = 5\n", "f.toml").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert_eq!(e.field.as_deref(), Some("timeouts.connect"));
        assert!(e.to_string().starts_with("f.toml:2:"), "{e}");
        let e = Config::from_toml("[timeouts]\nconnect = \"5 parsecs\"\n", "f").unwrap_err();
        assert!(e.message.contains("invalid duration"), "{e}");
        let e = Config::from_toml("[[upstream]]\nname = \"a\"\nurl = \"ftp://x:1\"\n", "f")
            .unwrap_err();
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(3), Some("upstream.url"))
        );
        assert!(e.message.contains("unsupported scheme"), "{e}");
        let e = Config::from_toml("[[listen]]\naddr = \"0.0.0.0:3128\"\n", "f").unwrap_err();
        assert!(e.message.contains("open proxy"), "{e}");
        let e = Config::from_toml("bogus = 1\n", "f").unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let e = Config::from_toml("[[listen]]\naddr = \"127.0.0.1:3128\"\n[[upstream]]\nname = \"me\"\nurl = \"http://127.0.0.1:3128\"\n", "f").unwrap_err();
        assert!(e.message.contains("loop"), "{e}");
    }

    #[test]
    fn effective_config_redacts() {
        let c = Config::from_toml("[[upstream]]\nname = \"a\"\nurl = \"http://bob:s3cret@p.example:8080\"\n[auth]\nusers = [\"al:pw1\"]\n", "f").unwrap();
        let out = c.effective_toml();
        assert!(!out.contains("s3cret") && !out.contains("pw1"), "{out}");
        assert!(out.contains("bob:***@p.example:8080"), "{out}");
        Config::from_toml(&out, "roundtrip").unwrap();
    }

    #[test]
    fn env_split_http_https() {
        let env = ProxyEnv::from_lookup(|k| match k {
            "HTTP_PROXY" => Some("http://h.example:1".into()),
            _ => None,
        });
        let c = Config::from_env(&env).unwrap();
        assert_eq!(c.upstreams.len(), 2);
        assert!(c.upstreams[0].applies.plain && !c.upstreams[0].applies.tunnel);
        assert!(c.upstreams[1].spec.is_direct() && c.upstreams[1].applies.tunnel);
    }
}
