//! The Windows system proxy as a proxy environment, for zero-config `serve`.
//!
//! When no proxy variable is set, `serve` on Windows takes the manual proxy
//! of "Internet Settings" (`ProxyEnable`, `ProxyServer`, `ProxyOverride`)
//! as if it were `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`, and logs that it did.
//! The mapping is portable and unit-tested on recorded `reg query` output;
//! only reading the registry ([`super::windows::read_registry`]) is
//! Windows-only, and that read is not exercised by any test here.

use super::env::ProxyEnv;
use super::windows::WindowsProxySettings;

/// The system proxy mapped to a proxy environment, with what could not be
/// carried over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemProxyEnv {
    pub env: ProxyEnv,
    /// The equivalent variables, for the log (no credentials: WinINet keeps
    /// none in `ProxyServer`).
    pub vars: Vec<(&'static str, String)>,
    /// Settings with no equivalent (PAC, SOCKS4, `<local>`, mid-name wildcards).
    pub dropped: Vec<String>,
}

/// Maps one `ProxyOverride` pattern to a `NO_PROXY` entry, if it has one.
fn no_proxy_entry(pattern: &str) -> Option<String> {
    if !pattern.contains('*') {
        return Some(pattern.to_string());
    }
    // `*.example.com` → `.example.com` (the domain's subdomains).
    if let Some(rest) = pattern.strip_prefix("*.") {
        if !rest.contains('*') {
            return Some(format!(".{rest}"));
        }
    }
    // `10.*`, `192.168.*` → CIDR.
    let octets: Vec<&str> = pattern.split('.').collect();
    if octets.last() == Some(&"*") && octets.len() <= 4 {
        let fixed = &octets[..octets.len() - 1];
        if !fixed.is_empty() && fixed.iter().all(|o| o.parse::<u8>().is_ok()) {
            let mut full: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
            full.resize(4, "0".into());
            return Some(format!("{}/{}", full.join("."), fixed.len() * 8));
        }
    }
    None
}

/// Maps the system proxy to a proxy environment. `None` when the manual
/// proxy is off or names no HTTP server.
pub fn to_env(w: &WindowsProxySettings) -> Option<SystemProxyEnv> {
    if !w.enabled {
        return None;
    }
    let s = &w.servers;
    let url = |server: &String| {
        if server.contains("://") {
            server.clone()
        } else {
            format!("http://{server}")
        }
    };
    let http = s.http.as_ref().or(s.all.as_ref()).map(url);
    let https = s.https.as_ref().or(s.all.as_ref()).map(url);
    let mut dropped = Vec::new();
    if let Some(socks) = &s.socks {
        dropped.push(format!(
            "socks={socks} (WinINet speaks SOCKS4 to it; proxyguard speaks SOCKS5 only)"
        ));
    }
    if http.is_none() && https.is_none() {
        return None;
    }
    if let Some(pac) = &w.auto_config_url {
        dropped.push(format!("AutoConfigURL {pac} (PAC scripts are not run)"));
    }
    if w.bypass_local {
        dropped.push("<local> in ProxyOverride (no NO_PROXY form)".to_string());
    }
    let mut no_proxy = Vec::new();
    for p in &w.bypass_patterns {
        match no_proxy_entry(p) {
            Some(e) => no_proxy.push(e),
            None => dropped.push(format!("ProxyOverride pattern {p} (no NO_PROXY form)")),
        }
    }
    let mut vars = Vec::new();
    if let Some(h) = &http {
        vars.push(("HTTP_PROXY", h.clone()));
    }
    if let Some(h) = &https {
        vars.push(("HTTPS_PROXY", h.clone()));
    }
    if !no_proxy.is_empty() {
        vars.push(("NO_PROXY", no_proxy.join(",")));
    }
    let env = ProxyEnv::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    });
    Some(SystemProxyEnv { env, vars, dropped })
}

/// True when no proxy variable is set (then the system proxy may apply).
pub fn env_is_empty(env: &ProxyEnv) -> bool {
    env.http.is_none() && env.https.is_none() && env.no_proxy_raw.is_empty()
}

/// The environment zero-config `serve` uses: the variables when any is set,
/// else (on Windows) the system proxy, logged.
pub fn serve_env(env: ProxyEnv) -> ProxyEnv {
    if !env_is_empty(&env) {
        return env;
    }
    let Some(sys) = system_settings().as_ref().and_then(to_env) else {
        return env;
    };
    let vars: Vec<String> = sys.vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    tracing::info!(
        equivalent = %vars.join(" "),
        "no proxy variables set: using the Windows system proxy (Internet Settings)"
    );
    for d in &sys.dropped {
        tracing::warn!("Windows system proxy setting not carried over: {d}");
    }
    sys.env
}

fn system_settings() -> Option<WindowsProxySettings> {
    #[cfg(windows)]
    {
        super::windows::read_registry()
            .ok()
            .map(|raw| WindowsProxySettings::from_raw(&raw))
    }
    #[cfg(not(windows))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::windows::{parse_reg_query, WindowsProxySettings};
    use super::*;

    fn settings(reg: &str) -> WindowsProxySettings {
        WindowsProxySettings::from_raw(&parse_reg_query(reg))
    }

    const KEY: &str =
        "HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings\r\n";

    #[test]
    fn single_server_with_overrides_maps_to_both_variables_and_no_proxy() {
        let reg = format!(
            "\r\n{KEY}    ProxyEnable    REG_DWORD    0x1\r\n\
             \x20   ProxyServer    REG_SZ    proxy.corp:8080\r\n\
             \x20   ProxyOverride    REG_SZ    *.corp.example;10.*;192.168.1.*;intranet;<local>\r\n\r\n"
        );
        let m = to_env(&settings(&reg)).expect("enabled");
        assert_eq!(m.env.http.as_ref().unwrap().url, "http://proxy.corp:8080");
        assert_eq!(m.env.https.as_ref().unwrap().url, "http://proxy.corp:8080");
        assert_eq!(
            m.env.no_proxy_raw,
            ".corp.example,10.0.0.0/8,192.168.1.0/24,intranet"
        );
        assert!(m.env.proxy_for("https", "api.corp.example", 443).is_none());
        assert!(m.env.proxy_for("https", "10.1.2.3", 443).is_none());
        assert!(m.env.proxy_for("http", "192.168.1.9", 80).is_none());
        assert!(m.env.proxy_for("https", "192.168.2.9", 443).is_some());
        assert!(m.env.proxy_for("https", "example.com", 443).is_some());
        assert_eq!(
            m.dropped,
            vec!["<local> in ProxyOverride (no NO_PROXY form)"]
        );
    }

    #[test]
    fn per_protocol_servers_socks_and_pac() {
        let reg = format!(
            "{KEY}    ProxyEnable    REG_DWORD    0x1\r\n\
             \x20   ProxyServer    REG_SZ    http=h.corp:3128;https=s.corp:3129;socks=k.corp:1080\r\n\
             \x20   ProxyOverride    REG_SZ    a*b.corp\r\n\
             \x20   AutoConfigURL    REG_SZ    http://wpad.corp/wpad.dat\r\n"
        );
        let m = to_env(&settings(&reg)).unwrap();
        assert_eq!(m.env.http.as_ref().unwrap().url, "http://h.corp:3128");
        assert_eq!(m.env.https.as_ref().unwrap().url, "http://s.corp:3129");
        assert_eq!(m.dropped.len(), 3, "{:?}", m.dropped);
        assert!(m.dropped[0].contains("SOCKS4"));
        assert!(m.dropped.iter().any(|d| d.contains("PAC")));
        assert!(m.dropped.iter().any(|d| d.contains("a*b.corp")));
    }

    #[test]
    fn disabled_or_socks_only_gives_nothing() {
        let off = format!(
            "{KEY}    ProxyEnable    REG_DWORD    0x0\r\n    ProxyServer    REG_SZ    p:8080\r\n"
        );
        assert_eq!(to_env(&settings(&off)), None);
        let socks = format!(
            "{KEY}    ProxyEnable    REG_DWORD    0x1\r\n    ProxyServer    REG_SZ    socks=k:1080\r\n"
        );
        assert_eq!(to_env(&settings(&socks)), None);
        // Variables set: serve keeps them (no registry read needed to decide).
        let env = ProxyEnv::from_lookup(|n| (n == "HTTPS_PROXY").then(|| "http://e:1".into()));
        assert!(!env_is_empty(&env));
        assert_eq!(serve_env(env.clone()), env);
        assert!(env_is_empty(&ProxyEnv::from_lookup(|_| None)));
    }
}
