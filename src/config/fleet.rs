//! `[fleet]`: health shared between gateways through etcd (see
//! docs/fleet.md). Parsed here once into typed [`FleetSettings`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::load::{ConfigError, Ctx};
use super::schema::FileConfig;

/// `[fleet]` as written in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// etcd client URLs (`http://host:port`).
    pub etcd: Vec<String>,
    /// Key prefix of the reports; must end with `/`.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// This gateway's name in the reports (default: the host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Distinct other gateways that must report an upstream down.
    #[serde(default = "default_quorum")]
    pub quorum: u32,
    /// Lifetime of a report (an etcd lease) unless refreshed.
    #[serde(default = "default_ttl")]
    pub ttl: Dur,
}

fn default_prefix() -> String {
    "/proxyguard/fleet/".into()
}
fn default_quorum() -> u32 {
    2
}
fn default_ttl() -> Dur {
    Dur::secs(10)
}

/// `[fleet]` validated: what the fleet tasks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetSettings {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub id: String,
    pub quorum: usize,
    /// Whole seconds (etcd leases count seconds), at least 2.
    pub ttl: Duration,
}

/// Shortest report lifetime accepted.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// Validates `[fleet]`, when present.
pub(super) fn validate(
    cx: &Ctx<'_>,
    file: &FileConfig,
) -> Result<Option<FleetSettings>, ConfigError> {
    let Some(f) = &file.fleet else {
        return Ok(None);
    };
    if f.etcd.is_empty() {
        return cx.err(
            None,
            "fleet.etcd",
            "at least one etcd endpoint is required (e.g. [\"http://127.0.0.1:2379\"])".into(),
        );
    }
    for e in &f.etcd {
        if let Err(why) = check_endpoint(e) {
            // Never echo userinfo: it may hold a password.
            let shown = if e.contains('@') {
                "an endpoint"
            } else {
                e.as_str()
            };
            return cx.err(None, "fleet.etcd", format!("{shown:?}: {why}"));
        }
    }
    if f.prefix.is_empty() || !f.prefix.ends_with('/') {
        return cx.err(
            None,
            "fleet.prefix",
            format!(
                "{:?}: must end with '/' (e.g. \"/proxyguard/fleet/\")",
                f.prefix
            ),
        );
    }
    let id = match &f.id {
        Some(id) => id.clone(),
        None => hostname().unwrap_or_default(),
    };
    if let Err(why) = check_id(&id) {
        return cx.err(None, "fleet.id", why);
    }
    if f.quorum < 1 {
        return cx.err(None, "fleet.quorum", "must be at least 1".into());
    }
    let ttl = f.ttl.0;
    if ttl < MIN_TTL || ttl.subsec_nanos() != 0 {
        return cx.err(
            None,
            "fleet.ttl",
            format!(
                "{}: must be a whole number of seconds, at least 2s (etcd leases count seconds)",
                f.ttl
            ),
        );
    }
    Ok(Some(FleetSettings {
        endpoints: f
            .etcd
            .iter()
            .map(|e| e.trim_end_matches('/').to_string())
            .collect(),
        prefix: f.prefix.clone(),
        id,
        quorum: f.quorum as usize,
        ttl,
    }))
}

/// An etcd endpoint: `http://host:port`, nothing else (no credentials, path
/// or TLS: the client is built without them).
fn check_endpoint(e: &str) -> Result<(), String> {
    let u = url::Url::parse(e).map_err(|err| format!("not a URL ({err})"))?;
    if u.scheme() != "http" {
        return Err(format!(
            "scheme {:?} not supported: use http://host:port",
            u.scheme()
        ));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials in etcd URLs are not supported".into());
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    if u.path() != "/" && !u.path().is_empty() || u.query().is_some() {
        return Err("expected http://host:port with no path or query".into());
    }
    Ok(())
}

/// A gateway id is one etcd key segment: printable, no '/', no spaces.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty (and the host name is unknown): set [fleet] id".into());
    }
    if id.len() > 128 {
        return Err(format!("{id:?}: longer than 128 characters"));
    }
    if id
        .chars()
        .any(|c| c == '/' || c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{id:?}: must not contain '/', spaces or control characters"
        ));
    }
    Ok(())
}

/// This machine's host name (the default gateway id).
#[cfg(unix)]
pub fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    (!name.is_empty()).then_some(name)
}

/// This machine's host name (the default gateway id).
#[cfg(not(unix))]
pub fn hostname() -> Option<String> {
    std::env::var("COMPUTERNAME").ok().filter(|n| !n.is_empty())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn load(fleet: &str) -> Result<Config, String> {
        Config::from_toml(
            &format!("[[listen]]\naddr = \"127.0.0.1:3128\"\n[fleet]\n{fleet}"),
            "t",
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_typed_values() {
        let c = load("etcd = [\"http://127.0.0.1:2379/\"]\nid = \"gw-1\"\n").unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.endpoints, vec!["http://127.0.0.1:2379".to_string()]);
        assert_eq!(f.prefix, "/proxyguard/fleet/");
        assert_eq!((f.id.as_str(), f.quorum), ("gw-1", 2));
        assert_eq!(f.ttl.as_secs(), 10);
        let c = load("etcd = [\"http://127.0.0.1:2379\"]\n").unwrap();
        assert!(!c.fleet.unwrap().id.is_empty(), "defaults to the host name");
        assert!(load("").is_err(), "etcd is required");
    }

    #[test]
    fn bad_values_are_named() {
        let ep = "etcd = [\"http://127.0.0.1:2379\"]\n";
        for (extra, field, words) in [
            ("quorum = 0\n", "fleet.quorum", "at least 1"),
            ("ttl = \"1s\"\n", "fleet.ttl", "at least 2s"),
            ("ttl = \"2500ms\"\n", "fleet.ttl", "whole number"),
            ("prefix = \"/pg\"\n", "fleet.prefix", "end with '/'"),
            ("id = \"a/b\"\n", "fleet.id", "must not contain"),
        ] {
            let e = load(&format!("{ep}{extra}")).unwrap_err();
            assert!(e.contains(field) && e.contains(words), "{extra}: {e}");
        }
        for (etcd, words) in [
            ("[]", "at least one"),
            ("[\"https://127.0.0.1:2379\"]", "not supported"),
            ("[\"127.0.0.1:2379\"]", "not a URL"),
            ("[\"http://u:secret@127.0.0.1:2379\"]", "credentials"),
            ("[\"http://127.0.0.1:2379/v3\"]", "no path"),
        ] {
            let e = load(&format!("etcd = {etcd}\n")).unwrap_err();
            assert!(e.contains("fleet.etcd") && e.contains(words), "{etcd}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
