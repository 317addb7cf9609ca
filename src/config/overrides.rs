//! What the command line and the environment change after a file is loaded:
//! `serve --admin`, `[pool] upstreams_from_env`, and the warning when a
//! config without upstreams meets proxy variables it will not use.

use std::net::SocketAddr;

use toml::Spanned;

use super::env::ProxyEnv;
use super::{Config, ConfigError};

/// The proxy variables a config file without `[[upstream]]` ignores.
pub const PROXY_VARS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Span given to an address set on the command line: not the "default"
/// empty span, so a busy address is an error rather than a warning.
const CLI_SPAN: std::ops::Range<usize> = 0..1;

fn cli_error(field: &str, message: String) -> ConfigError {
    ConfigError {
        source_name: "--admin".into(),
        line: None,
        column: None,
        field: Some(field.into()),
        message,
    }
}

impl Config {
    /// `serve --admin ADDR` (Some) or `--admin off` (None). A non-loopback
    /// address needs an admin token, as in the file.
    pub fn set_admin(&mut self, addr: Option<SocketAddr>) -> Result<(), ConfigError> {
        match addr {
            None => {
                self.admin_addr = None;
                self.as_read.admin.enabled = false;
            }
            Some(a) => {
                if !a.ip().is_loopback() && self.admin_token.is_none() {
                    return Err(cli_error("admin.addr", format!("{a} is not loopback: set [admin] token_env (or token) so the admin API is not open to the network")));
                }
                self.admin_addr = Some(a);
                self.as_read.admin.enabled = true;
                self.as_read.admin.addr = Spanned::new(CLI_SPAN, a.to_string());
            }
        }
        Ok(())
    }

    /// True when the admin address was asked for (file or command line):
    /// then failing to bind it is an error. The built-in default only warns.
    pub fn admin_is_explicit(&self) -> bool {
        self.as_read.admin.addr.span() != (0..0)
    }

    /// `[pool] upstreams_from_env = true` with no `[[upstream]]`: use the
    /// proxies (and NO_PROXY) of the environment, as zero-config does.
    pub fn apply_upstreams_from_env(&mut self, env: &ProxyEnv) -> Result<(), ConfigError> {
        if !self.as_read.pool.upstreams_from_env {
            return Ok(());
        }
        if !self.as_read.upstream.is_empty() {
            return Err(ConfigError {
                source_name: self.source_name.clone(),
                line: None,
                column: None,
                field: Some("pool.upstreams_from_env".into()),
                message:
                    "is true, but the file also has [[upstream]] entries: use one or the other"
                        .into(),
            });
        }
        let from_env = Config::from_env(env)?;
        self.upstreams = from_env.upstreams;
        if self.no_proxy_raw.is_empty() {
            self.no_proxy = from_env.no_proxy;
            self.no_proxy_raw = from_env.no_proxy_raw;
        }
        self.check_loops()
    }

    /// The proxy variables that are set but unused because this config
    /// (from a file) has no upstream. Empty when nothing is lost.
    pub fn ignored_proxy_vars(&self, lookup: impl Fn(&str) -> Option<String>) -> Vec<&'static str> {
        if self.path.is_none() || !self.upstreams.is_empty() {
            return Vec::new();
        }
        PROXY_VARS
            .iter()
            .copied()
            .filter(|v| lookup(v).is_some_and(|x| !x.trim().is_empty()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[[listen]]\naddr = \"127.0.0.1:0\"\n";

    fn env(pairs: &[(&str, &str)]) -> ProxyEnv {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnv::from_lookup(|n| pairs.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()))
    }

    #[test]
    fn warns_about_set_proxy_vars_only_for_a_file_without_upstreams() {
        let mut c = Config::from_toml(BASE, "t.toml").unwrap();
        c.path = Some("t.toml".into());
        let look = |n: &str| {
            (n == "HTTPS_PROXY" || n == "http_proxy").then(|| "http://p:3128".to_string())
        };
        assert_eq!(c.ignored_proxy_vars(look), ["http_proxy", "HTTPS_PROXY"]);
        c.path = None;
        assert!(c.ignored_proxy_vars(look).is_empty());
    }

    #[test]
    fn upstreams_from_env_takes_the_environment_proxies() {
        let text = format!("{BASE}\n[pool]\nupstreams_from_env = true\n");
        let mut c = Config::from_toml(&text, "t.toml").unwrap();
        c.path = Some("t.toml".into());
        c.apply_upstreams_from_env(&env(&[("HTTPS_PROXY", "http://127.0.0.2:3128")]))
            .unwrap();
        // As zero-config: HTTPS_PROXY for tunnels, direct for plain HTTP.
        assert!(
            c.upstreams
                .iter()
                .any(|u| u.origin == "HTTPS_PROXY" && u.applies.tunnel),
            "{:?}",
            c.upstreams
        );
        assert!(c.ignored_proxy_vars(|_| Some("x".into())).is_empty());
        let both = format!("{text}\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.3:1\"\n");
        let mut c = Config::from_toml(&both, "t.toml").unwrap();
        let e = c.apply_upstreams_from_env(&env(&[])).unwrap_err();
        assert!(e.to_string().contains("upstreams_from_env"), "{e}");
    }

    #[test]
    fn admin_flag_sets_marks_explicit_and_turns_off() {
        let mut c = Config::from_toml(BASE, "t.toml").unwrap();
        assert!(!c.admin_is_explicit());
        c.set_admin(Some("127.0.0.1:19999".parse().unwrap()))
            .unwrap();
        assert!(c.admin_is_explicit());
        assert_eq!(c.admin_addr, Some("127.0.0.1:19999".parse().unwrap()));
        assert!(c.set_admin(Some("0.0.0.0:9".parse().unwrap())).is_err());
        c.set_admin(None).unwrap();
        assert_eq!(c.admin_addr, None);
    }
}
