//! `[[discovery]]`: upstream sets learnt at run time from DNS (A/AAAA or
//! SRV), etcd (one key per upstream) or files (a glob of TOML/JSON lists).
//! Validated once here into typed [`Source`]s; the entries a source returns
//! are validated by [`EntryConfig::to_entry`] (see src/discovery/).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::duration::Dur;
use super::load::{ConfigError, Ctx, UpstreamEntry};
use super::schema::FileConfig;
use crate::upstream::UpstreamSpec;

/// Most upstreams one source may contribute; more are dropped (with an event).
pub const MAX_MEMBERS: usize = 256;
/// Most `[[discovery]]` sources in one configuration.
pub const MAX_SOURCES: usize = 32;
/// Shortest refresh interval (DNS also never refreshes faster than this,
/// whatever the record TTL).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryKind {
    Dns,
    Etcd,
    File,
}

impl DiscoveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DiscoveryKind::Dns => "dns",
            DiscoveryKind::Etcd => "etcd",
            DiscoveryKind::File => "file",
        }
    }
}

/// One `[[discovery]]` table as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// `dns`, `etcd` or `file`.
    pub kind: Spanned<DiscoveryKind>,
    /// dns: the name to query. `_service._proto.name` asks for SRV records,
    /// anything else for A and AAAA records.
    pub name: Option<Spanned<String>>,
    /// dns: the scheme of the discovered proxies (`http`, `https`,
    /// `socks5`, `socks5h`; default `http`).
    pub scheme: Option<Spanned<String>>,
    /// dns, A/AAAA only: the proxies' port (SRV records carry their own).
    pub port: Option<Spanned<u16>>,
    /// dns: refresh period (default 30s; the record TTL when shorter; never
    /// under 1s). file: poll period (default 1s).
    pub interval: Option<Dur>,
    /// dns: `IP` or `IP:port` of the name server to ask (default: the
    /// system resolver).
    pub dns_server: Option<Spanned<String>>,
    /// etcd: client URLs, e.g. `["http://127.0.0.1:2379"]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Spanned<String>>,
    /// etcd: every key under this prefix holds one upstream entry (JSON).
    pub prefix: Option<Spanned<String>>,
    /// file: a glob of TOML (`[[upstream]]` tables) or JSON (a list of
    /// entries) files.
    pub path: Option<Spanned<String>>,
}

/// A validated discovery source.
#[derive(Debug, Clone, PartialEq)]
pub struct Source {
    /// Unique and readable: `dns:NAME`, `etcd:PREFIX` or `file:GLOB`.
    pub id: String,
    pub spec: SourceSpec,
}

impl Source {
    pub fn kind(&self) -> DiscoveryKind {
        match self.spec {
            SourceSpec::Dns(_) => DiscoveryKind::Dns,
            SourceSpec::Etcd(_) => DiscoveryKind::Etcd,
            SourceSpec::File(_) => DiscoveryKind::File,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SourceSpec {
    Dns(DnsSpec),
    Etcd(EtcdSpec),
    File(FileSpec),
}

#[derive(Debug, Clone, PartialEq)]
pub struct DnsSpec {
    /// Lower-case, without the trailing dot.
    pub name: String,
    /// SRV (`_service._proto.` names) or A/AAAA with `port`.
    pub record: DnsRecord,
    /// `http`, `https`, `socks5` or `socks5h`.
    pub scheme: String,
    pub interval: Duration,
    /// None: the system resolver.
    pub server: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRecord {
    Srv,
    Addr { port: u16 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSpec {
    pub endpoints: Vec<String>,
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FileSpec {
    pub pattern: String,
    pub interval: Duration,
}

fn is_dns_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 253
        && n.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

/// Validates every `[[discovery]]` table.
pub(super) fn validate(cx: &Ctx<'_>, file: &FileConfig) -> Result<Vec<Source>, ConfigError> {
    let mut out: Vec<Source> = Vec::new();
    if file.discovery.len() > MAX_SOURCES {
        return cx.err(
            None,
            "discovery",
            format!("at most {MAX_SOURCES} [[discovery]] sources"),
        );
    }
    for d in &file.discovery {
        let s = source(cx, d)?;
        if out.iter().any(|o| o.id == s.id) {
            return cx.err(
                Some(d.kind.span()),
                "discovery",
                format!("duplicate discovery source {:?}", s.id),
            );
        }
        out.push(s);
    }
    Ok(out)
}

/// Keys that only some kinds take: any other kind naming them is an error.
fn refuse_foreign(cx: &Ctx<'_>, d: &DiscoveryConfig) -> Result<(), ConfigError> {
    let kind = *d.kind.get_ref();
    let set: [(&str, bool, &[DiscoveryKind]); 7] = [
        ("name", d.name.is_some(), &[DiscoveryKind::Dns]),
        ("scheme", d.scheme.is_some(), &[DiscoveryKind::Dns]),
        ("port", d.port.is_some(), &[DiscoveryKind::Dns]),
        ("dns_server", d.dns_server.is_some(), &[DiscoveryKind::Dns]),
        ("endpoints", !d.endpoints.is_empty(), &[DiscoveryKind::Etcd]),
        ("prefix", d.prefix.is_some(), &[DiscoveryKind::Etcd]),
        ("path", d.path.is_some(), &[DiscoveryKind::File]),
    ];
    for (key, present, kinds) in set {
        if present && !kinds.contains(&kind) {
            return cx.err(
                Some(d.kind.span()),
                &format!("discovery.{key}"),
                format!(
                    "`{key}` does not apply to kind = \"{}\" (it is for kind = \"{}\")",
                    kind.as_str(),
                    kinds[0].as_str()
                ),
            );
        }
    }
    if kind == DiscoveryKind::Etcd && d.interval.is_some() {
        return cx.err(
            Some(d.kind.span()),
            "discovery.interval",
            "etcd sources are watched, not polled: remove `interval`".into(),
        );
    }
    Ok(())
}

fn interval(cx: &Ctx<'_>, d: &DiscoveryConfig, default: Duration) -> Result<Duration, ConfigError> {
    let i = d.interval.map(|i| i.0).unwrap_or(default);
    if i < MIN_INTERVAL {
        return cx.err(
            Some(d.kind.span()),
            "discovery.interval",
            format!("must be at least {MIN_INTERVAL:?}"),
        );
    }
    Ok(i)
}

fn source(cx: &Ctx<'_>, d: &DiscoveryConfig) -> Result<Source, ConfigError> {
    refuse_foreign(cx, d)?;
    match d.kind.get_ref() {
        DiscoveryKind::Dns => dns(cx, d),
        DiscoveryKind::Etcd => etcd(cx, d),
        DiscoveryKind::File => {
            let Some(p) = &d.path else {
                return cx.err(
                    Some(d.kind.span()),
                    "discovery.path",
                    "kind = \"file\" needs `path` (a file or a glob such as \"/etc/proxyguard/upstreams.d/*.toml\")".into(),
                );
            };
            let pattern = p.get_ref().trim().to_string();
            if pattern.is_empty() {
                return cx.err(Some(p.span()), "discovery.path", "must not be empty".into());
            }
            if let Err(e) = glob::Pattern::new(&pattern) {
                return cx.err(
                    Some(p.span()),
                    "discovery.path",
                    format!("{pattern:?} is not a valid glob: {e}"),
                );
            }
            Ok(Source {
                id: format!("file:{pattern}"),
                spec: SourceSpec::File(FileSpec {
                    pattern,
                    interval: interval(cx, d, Duration::from_secs(1))?,
                }),
            })
        }
    }
}

fn dns(cx: &Ctx<'_>, d: &DiscoveryConfig) -> Result<Source, ConfigError> {
    let Some(n) = &d.name else {
        return cx.err(
            Some(d.kind.span()),
            "discovery.name",
            "kind = \"dns\" needs `name` (e.g. \"_proxy._tcp.egress.example\" for SRV, or a host name for A/AAAA)".into(),
        );
    };
    let name = n
        .get_ref()
        .trim()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if !is_dns_name(&name) {
        return cx.err(
            Some(n.span()),
            "discovery.name",
            format!("{:?} is not a DNS name", n.get_ref()),
        );
    }
    let srv = name.starts_with('_');
    let record = match (srv, &d.port) {
        (true, Some(p)) => {
            return cx.err(
                Some(p.span()),
                "discovery.port",
                "SRV records carry their own port: remove `port`".into(),
            )
        }
        (true, None) => DnsRecord::Srv,
        (false, None) => {
            return cx.err(
                Some(n.span()),
                "discovery.port",
                format!("A/AAAA records of {name:?} carry no port: set `port` (or query an SRV name like \"_proxy._tcp.{name}\")"),
            )
        }
        (false, Some(p)) if *p.get_ref() == 0 => {
            return cx.err(Some(p.span()), "discovery.port", "must be 1..=65535".into())
        }
        (false, Some(p)) => DnsRecord::Addr { port: *p.get_ref() },
    };
    let scheme = match &d.scheme {
        None => "http".to_string(),
        Some(s) => {
            let v = s.get_ref().trim().to_ascii_lowercase();
            if !["http", "https", "socks5", "socks5h"].contains(&v.as_str()) {
                return cx.err(
                    Some(s.span()),
                    "discovery.scheme",
                    format!("{v:?}: expected \"http\", \"https\", \"socks5\" or \"socks5h\""),
                );
            }
            v
        }
    };
    let server = match &d.dns_server {
        None => None,
        Some(s) => {
            let t = s.get_ref().trim();
            let addr = t
                .parse::<SocketAddr>()
                .ok()
                .or_else(|| t.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53)));
            match addr {
                Some(a) => Some(a),
                None => {
                    return cx.err(
                        Some(s.span()),
                        "discovery.dns_server",
                        format!("{t:?}: expected IP or IP:port, e.g. \"127.0.0.1:5353\""),
                    )
                }
            }
        }
    };
    Ok(Source {
        id: format!("dns:{name}"),
        spec: SourceSpec::Dns(DnsSpec {
            name,
            record,
            scheme,
            interval: interval(cx, d, Duration::from_secs(30))?,
            server,
        }),
    })
}

fn etcd(cx: &Ctx<'_>, d: &DiscoveryConfig) -> Result<Source, ConfigError> {
    if d.endpoints.is_empty() {
        return cx.err(
            Some(d.kind.span()),
            "discovery.endpoints",
            "kind = \"etcd\" needs `endpoints`, e.g. [\"http://127.0.0.1:2379\"]".into(),
        );
    }
    let mut endpoints = Vec::new();
    for e in &d.endpoints {
        let t = e.get_ref().trim();
        let ok = url::Url::parse(t).is_ok_and(|u| {
            u.scheme() == "http"
                && u.host_str().is_some()
                && u.username().is_empty()
                && u.password().is_none()
        });
        if !ok {
            return cx.err(
                Some(e.span()),
                "discovery.endpoints",
                format!(
                    "{:?}: expected http://host:port (no user info; TLS endpoints are not supported)",
                    super::redact::redact(t)
                ),
            );
        }
        endpoints.push(t.trim_end_matches('/').to_string());
    }
    let Some(p) = &d.prefix else {
        return cx.err(
            Some(d.kind.span()),
            "discovery.prefix",
            "kind = \"etcd\" needs `prefix`, e.g. \"/proxyguard/upstreams/\"".into(),
        );
    };
    if p.get_ref().is_empty() {
        return cx.err(
            Some(p.span()),
            "discovery.prefix",
            "must not be empty".into(),
        );
    }
    Ok(Source {
        id: format!("etcd:{}", p.get_ref()),
        spec: SourceSpec::Etcd(EtcdSpec {
            endpoints,
            prefix: p.get_ref().clone(),
        }),
    })
}

/// One discovered upstream as an etcd value or a file entry holds it: the
/// `[[upstream]]` fields, with the name optional (required in files; in etcd
/// the key names the member unless given) and the URL a plain string.
pub type EntryConfig = super::member::MemberConfig<Option<String>, String>;

/// Longest member name a source may produce.
pub const MAX_NAME: usize = 200;

/// Checks a discovered member name: printable, no spaces, bounded.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.len() > MAX_NAME {
        return Err(format!("name longer than {MAX_NAME} bytes"));
    }
    if name.is_empty() || name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "name {:?} is empty or has spaces or control characters",
            name.escape_debug().to_string()
        ));
    }
    Ok(())
}

impl EntryConfig {
    /// The pool entry, named `member` and marked with `origin` (the source
    /// kind). Errors name the field and never echo credentials.
    pub fn to_entry(&self, member: String, origin: &str) -> Result<UpstreamEntry, String> {
        check_name(&member)?;
        let spec = UpstreamSpec::parse(&member, &self.url).map_err(|e| {
            format!(
                "`url` {:?}: {e}",
                super::redact::redact(self.url.trim())
                    .chars()
                    .take(200)
                    .collect::<String>()
            )
        })?;
        if self.weight == 0 {
            return Err("`weight` must be at least 1".into());
        }
        Ok(self.entry(spec, origin))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    fn load(t: &str) -> Result<Config, ConfigError> {
        Config::from_toml(t, "f.toml")
    }

    #[test]
    fn the_three_kinds_load_typed() {
        let c = load(
            "[[discovery]]\nkind = \"dns\"\nname = \"_proxy._tcp.Egress.example.\"\ninterval = \"10s\"\ndns_server = \"127.0.0.1:5353\"\n\
             [[discovery]]\nkind = \"dns\"\nname = \"egress.example\"\nport = 3128\nscheme = \"socks5\"\ndns_server = \"::1\"\n\
             [[discovery]]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379/\"]\nprefix = \"/pg/up/\"\n\
             [[discovery]]\nkind = \"file\"\npath = \"/etc/pg/*.toml\"\n",
        )
        .unwrap();
        let ids: Vec<&str> = c.discovery.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "dns:_proxy._tcp.egress.example",
                "dns:egress.example",
                "etcd:/pg/up/",
                "file:/etc/pg/*.toml"
            ]
        );
        match &c.discovery[0].spec {
            SourceSpec::Dns(d) => {
                assert_eq!(d.record, DnsRecord::Srv);
                assert_eq!(d.interval, Duration::from_secs(10));
                assert_eq!(d.server, Some("127.0.0.1:5353".parse().unwrap()));
                assert_eq!(d.scheme, "http");
            }
            s => panic!("{s:?}"),
        }
        match &c.discovery[1].spec {
            SourceSpec::Dns(d) => {
                assert_eq!(d.record, DnsRecord::Addr { port: 3128 });
                assert_eq!(d.interval, Duration::from_secs(30));
                assert_eq!(d.server, Some("[::1]:53".parse().unwrap()));
            }
            s => panic!("{s:?}"),
        }
        match &c.discovery[2].spec {
            SourceSpec::Etcd(e) => assert_eq!(e.endpoints, ["http://127.0.0.1:2379"]),
            s => panic!("{s:?}"),
        }
        match &c.discovery[3].spec {
            SourceSpec::File(f) => assert_eq!(f.interval, Duration::from_secs(1)),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn bad_tables_name_line_and_field() {
        let cases: &[(&str, usize, &str, &str)] = &[
            ("[[discovery]]\nkind = \"consul\"\n", 2, "discovery.kind", "unknown variant"),
            ("[[discovery]]\nkind = \"dns\"\n", 2, "discovery.name", "needs `name`"),
            ("[[discovery]]\nkind = \"dns\"\nname = \"egress.example\"\n", 3, "discovery.port", "set `port`"),
            ("[[discovery]]\nkind = \"dns\"\nname = \"_p._tcp.x\"\nport = 3\n", 4, "discovery.port", "remove `port`"),
            ("[[discovery]]\nkind = \"dns\"\nname = \"bad name\"\nport = 3\n", 3, "discovery.name", "not a DNS name"),
            ("[[discovery]]\nkind = \"dns\"\nname = \"x.y\"\nport = 3\nscheme = \"ftp\"\n", 5, "discovery.scheme", "expected"),
            ("[[discovery]]\nkind = \"dns\"\nname = \"x.y\"\nport = 3\ndns_server = \"here\"\n", 5, "discovery.dns_server", "IP or IP:port"),
            ("[[discovery]]\nkind = \"dns\"\nname = \"x.y\"\nport = 3\ninterval = \"100ms\"\n", 2, "discovery.interval", "at least"),
            ("[[discovery]]\nkind = \"etcd\"\nprefix = \"/p/\"\n", 2, "discovery.endpoints", "needs `endpoints`"),
            ("[[discovery]]\nkind = \"etcd\"\nendpoints = [\"http://u:s3cret@h:1\"]\nprefix = \"/p/\"\n", 3, "discovery.endpoints", "no user info"),
            ("[[discovery]]\nkind = \"etcd\"\nendpoints = [\"http://h:1\"]\n", 2, "discovery.prefix", "needs `prefix`"),
            ("[[discovery]]\nkind = \"etcd\"\nendpoints = [\"http://h:1\"]\nprefix = \"/p/\"\npath = \"x\"\n", 2, "discovery.path", "does not apply"),
            ("[[discovery]]\nkind = \"file\"\n", 2, "discovery.path", "needs `path`"),
            ("[[discovery]]\nkind = \"file\"\npath = \"/x/[*.toml\"\n", 3, "discovery.path", "not a valid glob"),
            ("[[discovery]]\nkind = \"file\"\npath = \"/x\"\n[[discovery]]\nkind = \"file\"\npath = \"/x\"\n", 5, "discovery", "duplicate"),
        ];
        for (text, line, field, msg) in cases {
            let e = load(text).unwrap_err();
            assert_eq!(e.line, Some(*line), "{text}: {e}");
            assert_eq!(e.field.as_deref(), Some(*field), "{text}: {e}");
            assert!(e.message.contains(msg), "{text}: {e}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn entries_validate_without_echoing_secrets() {
        let ok: EntryConfig = serde_json::from_str(
            r#"{"url":"http://127.0.0.1:3128","priority":2,"weight":5,"fail_timeout":"3s"}"#,
        )
        .unwrap();
        let e = ok.to_entry("etcd:a".into(), "etcd").unwrap();
        assert_eq!((e.priority, e.weight, e.origin.as_str()), (2, 5, "etcd"));
        assert_eq!(e.fail_timeout, Duration::from_secs(3));
        let bad: EntryConfig = serde_json::from_str(r#"{"url":"ftp://u:s3cret@h:1"}"#).unwrap();
        let msg = bad.to_entry("etcd:a".into(), "etcd").unwrap_err();
        assert!(msg.contains("`url`") && !msg.contains("s3cret"), "{msg}");
        assert!(ok.to_entry("etcd:a b".into(), "etcd").is_err());
        assert!(serde_json::from_str::<EntryConfig>(r#"{"url":"x","bogus":1}"#).is_err());
    }
}
