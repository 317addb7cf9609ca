//! The security settings: the `[acl]` section, the brute-force ban keys of
//! `[auth]`, the per-client connection limit and the admin API's hardening
//! rules. Parsed here once into typed settings; see docs/security.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::schema::FileConfig;
use super::ConfigError;
use crate::acl::{AclRules, Rule};

/// `[acl]`: which destinations clients of the listeners may reach.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AclConfig {
    /// Destinations refused: words (`loopback`, `link_local`, `metadata`,
    /// `private`), CIDRs or IPs, host names and suffixes (`*.internal`).
    /// Unset: a listener off loopback refuses `loopback`, `link_local` and
    /// `metadata`; a loopback listener refuses nothing (but itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deny: Option<Vec<String>>,
    /// When non-empty, only these destinations (same forms as `deny`); an
    /// entry here also lifts a matching `deny`.
    pub allow: Vec<String>,
    /// CONNECT and SOCKS5 only to these ports. Empty: any port.
    pub connect_ports: Vec<u16>,
}

/// Shortest admin token accepted when the admin API listens off loopback.
pub const MIN_REMOTE_TOKEN_LEN: usize = 16;

/// Largest configuration file read (bigger ones are refused unread).
pub const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Brute-force protection for inbound credentials (`[auth]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanSettings {
    /// Failed logins from one client IP within `fail_window` before a ban.
    pub max_failures: u32,
    pub fail_window: Duration,
    /// First ban; each repeat ban doubles it, up to `max_ban`.
    pub ban_for: Duration,
    pub max_ban: Duration,
}

impl Default for BanSettings {
    fn default() -> Self {
        BanSettings {
            max_failures: 5,
            fail_window: Duration::from_secs(60),
            ban_for: Duration::from_secs(300),
            max_ban: Duration::from_secs(24 * 3600),
        }
    }
}

/// Everything security-related, validated.
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// The `[acl]` rules as configured (defaults are applied per listener).
    pub acl: AclRules,
    pub bans: BanSettings,
    /// `[limits] max_connections_per_client` (0 would refuse all: rejected).
    pub max_connections_per_client: usize,
    /// `Host` header values the admin API accepts besides its own address
    /// and `localhost`.
    pub admin_hosts: Vec<String>,
}

fn err(source: &str, field: &str, message: String) -> ConfigError {
    ConfigError {
        source_name: source.to_string(),
        line: None,
        column: None,
        field: Some(field.to_string()),
        message,
    }
}

fn rules(source: &str, field: &str, list: &[String]) -> Result<Vec<Rule>, ConfigError> {
    list.iter()
        .map(|s| {
            Rule::parse(s).ok_or_else(|| {
                err(
                    source,
                    field,
                    format!(
                        "{s:?}: expected loopback, link_local, metadata, private, a CIDR, an IP, \
                         a host name or a suffix like \"*.internal\""
                    ),
                )
            })
        })
        .collect()
}

/// Validates the security settings of `file` (`source` names it in errors).
pub fn validate(
    file: &FileConfig,
    admin_token: Option<&str>,
    source: &str,
) -> Result<Security, ConfigError> {
    let acl = AclRules {
        deny: match &file.acl.deny {
            Some(d) => Some(rules(source, "acl.deny", d)?),
            None => None,
        },
        allow: rules(source, "acl.allow", &file.acl.allow)?,
        connect_ports: file.acl.connect_ports.clone(),
    };
    if file.acl.connect_ports.contains(&0) {
        return Err(err(
            source,
            "acl.connect_ports",
            "port 0 is not a port".into(),
        ));
    }
    let a = &file.auth;
    let d = BanSettings::default();
    let bans = BanSettings {
        max_failures: a.max_failures.unwrap_or(d.max_failures),
        fail_window: a.fail_window.map_or(d.fail_window, |x| x.0),
        ban_for: a.ban_for.map_or(d.ban_for, |x| x.0),
        max_ban: d.max_ban,
    };
    if bans.max_failures == 0 {
        return Err(err(
            source,
            "auth.max_failures",
            "must be at least 1".into(),
        ));
    }
    if bans.fail_window.is_zero() || bans.ban_for.is_zero() {
        return Err(err(
            source,
            "auth.fail_window/ban_for",
            "must be greater than zero".into(),
        ));
    }
    for u in &a.users {
        if let Some((name, pass)) = u.get_ref().split_once(':') {
            if pass.is_empty() {
                return Err(err(
                    source,
                    "auth.users",
                    format!("user {name:?} has an empty password"),
                ));
            }
        }
    }
    if file.limits.max_connections_per_client == 0 {
        return Err(err(
            source,
            "limits.max_connections_per_client",
            "must be at least 1".into(),
        ));
    }
    admin_rules(file, admin_token, source)?;
    Ok(Security {
        acl,
        bans,
        max_connections_per_client: file.limits.max_connections_per_client,
        admin_hosts: file
            .admin
            .hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect(),
    })
}

fn admin_rules(
    file: &FileConfig,
    admin_token: Option<&str>,
    source: &str,
) -> Result<(), ConfigError> {
    if file
        .admin
        .token
        .as_deref()
        .is_some_and(|t| t.trim().is_empty())
    {
        return Err(err(
            source,
            "admin.token",
            "is empty: set a real token (or remove the key)".into(),
        ));
    }
    if !file.admin.enabled {
        return Ok(());
    }
    let off_loopback = file
        .admin
        .addr
        .get_ref()
        .trim()
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| !a.ip().is_loopback());
    if off_loopback && admin_token.is_some_and(|t| t.len() < MIN_REMOTE_TOKEN_LEN) {
        return Err(err(
            source,
            "admin.token",
            format!(
                "the admin API listens off loopback: its token must be at least \
                 {MIN_REMOTE_TOKEN_LEN} characters"
            ),
        ));
    }
    Ok(())
}

/// Reads a configuration file, refusing anything that is not a regular file
/// or is larger than [`MAX_CONFIG_BYTES`] (never reads more than that).
pub fn read_config_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let f = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let meta = f.metadata().map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file; refusing to read it as configuration".into());
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} bytes is larger than the {} MiB limit for a configuration file",
            meta.len(),
            MAX_CONFIG_BYTES / (1024 * 1024)
        ));
    }
    let mut text = String::new();
    f.take(MAX_CONFIG_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!(
            "larger than the {} MiB limit for a configuration file",
            MAX_CONFIG_BYTES / (1024 * 1024)
        ));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_regular_and_huge_files() {
        let e = read_config_file(std::path::Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.toml");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        let e = read_config_file(&p).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        std::fs::write(&p, "x = 1\n").unwrap();
        assert_eq!(read_config_file(&p).unwrap(), "x = 1\n");
    }
}
