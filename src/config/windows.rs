//! Windows "Internet Settings" proxy configuration (what the Settings app,
//! Edge/Chrome and WinINet-based programs use), parsed portably.
//!
//! The values live in
//! `HKCU\Software\Microsoft\Windows\CurrentVersion\Internet Settings`:
//!
//! * `ProxyEnable` (DWORD): 1 when the manual proxy is on;
//! * `ProxyServer`: either `host:port` (all protocols) or a per-protocol
//!   list `http=h:p;https=h:p;ftp=h:p;socks=h:p`;
//! * `ProxyOverride`: `;`-separated bypass list with `*` wildcards
//!   (`*.example.com`, `10.*`) and the special `<local>` (names without a
//!   dot);
//! * `AutoConfigURL`: a PAC script URL.
//!
//! **Go never reads any of this.** Go programs on Windows only honour
//! `HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`, so a machine whose browser works
//! through the system proxy can still have every Go tool connect directly.
//! [`WindowsProxySettings::go_notes`] spells that out for the doctor.
//!
//! Only reading the registry is Windows-specific ([`read_registry`], which
//! shells out to `reg query` to avoid FFI); parsing its text output
//! ([`parse_reg_query`]) is portable and tested everywhere.

use super::noproxy::parse_ip;

/// The registry key holding the per-user proxy settings.
pub const INTERNET_SETTINGS_KEY: &str =
    r"HKCU\Software\Microsoft\Windows\CurrentVersion\Internet Settings";

/// The proxy-related registry values, as read. `None` means absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawValues {
    /// `ProxyEnable` (REG_DWORD).
    pub proxy_enable: Option<u32>,
    /// `ProxyServer` (REG_SZ).
    pub proxy_server: Option<String>,
    /// `ProxyOverride` (REG_SZ).
    pub proxy_override: Option<String>,
    /// `AutoConfigURL` (REG_SZ).
    pub auto_config_url: Option<String>,
}

/// Parses the text printed by
/// `reg query "HKCU\Software\Microsoft\Windows\CurrentVersion\Internet Settings"`.
///
/// Only values of the first key are read; the sub-key list `reg` prints
/// after them is ignored. Value lines look like
/// `    ProxyServer    REG_SZ    proxy:8080` (four-space separators; names
/// may contain single spaces). Unknown or malformed lines are skipped.
pub fn parse_reg_query(output: &str) -> RawValues {
    let mut raw = RawValues::default();
    let mut in_key = false;
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if line.starts_with("HKEY_") {
            if in_key {
                break; // a sub-key: our values are done
            }
            in_key = true;
            continue;
        }
        let Some((name, kind, data)) = parse_value_line(line) else {
            continue;
        };
        let text = || Some(data.to_owned());
        match name.to_ascii_lowercase().as_str() {
            "proxyenable" if kind == "REG_DWORD" => raw.proxy_enable = parse_dword(data),
            "proxyserver" => raw.proxy_server = text(),
            "proxyoverride" => raw.proxy_override = text(),
            "autoconfigurl" => raw.auto_config_url = text(),
            _ => {}
        }
    }
    raw
}

/// Splits `    Name    REG_TYPE    data` into its three parts.
fn parse_value_line(line: &str) -> Option<(&str, &str, &str)> {
    const SEP: &str = "    ";
    let body = line.strip_prefix(SEP)?;
    let type_at = body.find("    REG_")?;
    let name = body[..type_at].trim();
    let rest = &body[type_at + SEP.len()..];
    let (kind, data) = rest.split_once(SEP).unwrap_or((rest, ""));
    Some((name, kind.trim(), data))
}

/// `reg` prints DWORDs as `0x1`.
fn parse_dword(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Reads the current user's Internet Settings with `reg query`.
#[cfg(windows)]
pub fn read_registry() -> std::io::Result<RawValues> {
    let out = std::process::Command::new("reg")
        .args(["query", INTERNET_SETTINGS_KEY])
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "reg query failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(parse_reg_query(&String::from_utf8_lossy(&out.stdout)))
}

/// The proxy servers from `ProxyServer`, as written (`host:port`, sometimes
/// with a scheme).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyServers {
    /// The plain `host:port` form: used for http, https and ftp.
    pub all: Option<String>,
    /// `http=`.
    pub http: Option<String>,
    /// `https=`.
    pub https: Option<String>,
    /// `ftp=`.
    pub ftp: Option<String>,
    /// `socks=` (WinINet speaks SOCKS4 to it).
    pub socks: Option<String>,
}

impl ProxyServers {
    /// Parses a `ProxyServer` value. Entries are separated by `;` (spaces
    /// are tolerated); unknown `proto=` keys are ignored, the first
    /// occurrence of each key wins.
    pub fn parse(value: &str) -> Self {
        let mut servers = Self::default();
        for entry in value.split([';', ' ']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            let (slot, server) = match entry.split_once('=') {
                Some((key, server)) => {
                    let slot = match key.trim().to_ascii_lowercase().as_str() {
                        "http" => &mut servers.http,
                        "https" => &mut servers.https,
                        "ftp" => &mut servers.ftp,
                        "socks" => &mut servers.socks,
                        _ => continue,
                    };
                    (slot, server.trim())
                }
                None => (&mut servers.all, entry),
            };
            if slot.is_none() && !server.is_empty() {
                *slot = Some(server.to_owned());
            }
        }
        servers
    }

    /// True when no server is configured.
    pub fn is_empty(&self) -> bool {
        self.all.is_none()
            && self.http.is_none()
            && self.https.is_none()
            && self.ftp.is_none()
            && self.socks.is_none()
    }
}

/// The effective Windows proxy configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowsProxySettings {
    /// `ProxyEnable` is non-zero.
    pub enabled: bool,
    /// The configured servers (used only when `enabled`).
    pub servers: ProxyServers,
    /// `<local>` is in `ProxyOverride`.
    pub bypass_local: bool,
    /// The other `ProxyOverride` patterns, lower-cased.
    pub bypass_patterns: Vec<String>,
    /// `AutoConfigURL` (a PAC script); not evaluated here.
    pub auto_config_url: Option<String>,
}

impl WindowsProxySettings {
    /// Interprets the raw registry values.
    pub fn from_raw(raw: &RawValues) -> Self {
        let mut bypass_local = false;
        let mut bypass_patterns = Vec::new();
        let overrides = raw.proxy_override.as_deref().unwrap_or_default();
        for entry in overrides.split(';').map(str::trim) {
            if entry.eq_ignore_ascii_case("<local>") {
                bypass_local = true;
            } else if !entry.is_empty() {
                bypass_patterns.push(entry.to_ascii_lowercase());
            }
        }
        Self {
            enabled: raw.proxy_enable.is_some_and(|v| v != 0),
            servers: ProxyServers::parse(raw.proxy_server.as_deref().unwrap_or_default()),
            bypass_local,
            bypass_patterns,
            auto_config_url: raw
                .auto_config_url
                .as_deref()
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
        }
    }

    /// The proxy URL WinINet would use for `scheme://host`, or `None` for a
    /// direct connection. `scheme` is `http`, `https` or `ftp`.
    ///
    /// Protocol-specific servers win over the plain form; a `socks=` server
    /// is the last resort for every protocol. The PAC script is not run.
    pub fn proxy_for(&self, scheme: &str, host: &str) -> Option<String> {
        if !self.enabled || self.bypass(host) {
            return None;
        }
        let s = &self.servers;
        let specific = match scheme.to_ascii_lowercase().as_str() {
            "http" => s.http.as_ref(),
            "https" => s.https.as_ref(),
            "ftp" => s.ftp.as_ref(),
            _ => return None,
        };
        match specific.or(s.all.as_ref()) {
            Some(server) => Some(with_scheme(server, "http")),
            None => s.socks.as_ref().map(|server| with_scheme(server, "socks4")),
        }
    }

    /// Does `ProxyOverride` (or the implicit loopback rule) send `host`
    /// direct? `host` may be a name or an IP, IPv6 with or without
    /// brackets.
    ///
    /// Like WinINet and Chromium, `localhost` and loopback IPs always go
    /// direct. `<local>` matches names without a dot, but not IP literals
    /// (Chromium's reading). Patterns are matched case-insensitively
    /// against the host only, with `*` matching any run of characters;
    /// `example.com` does not cover its subdomains.
    pub fn bypass(&self, host: &str) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .to_ascii_lowercase();
        let ip = parse_ip(&host);
        if host == "localhost" || ip.is_some_and(|ip| ip.is_loopback()) {
            return true;
        }
        if self.bypass_local && ip.is_none() && !host.contains('.') {
            return true;
        }
        self.bypass_patterns.iter().any(|p| glob_match(p, &host))
    }

    /// What Go programs will do differently from this configuration.
    pub fn go_notes(&self) -> Vec<&'static str> {
        let mut notes = Vec::new();
        if self.enabled && !self.servers.is_empty() {
            notes.push(
                "Go ignores the Windows ProxyServer setting: Go programs connect directly \
                 unless HTTP_PROXY/HTTPS_PROXY are set",
            );
        }
        if self.bypass_local || !self.bypass_patterns.is_empty() {
            notes.push(
                "Go ignores ProxyOverride; the equivalent must be put in NO_PROXY \
                 (<local> and mid-name wildcards like 10.* have no NO_PROXY form; use CIDR)",
            );
        }
        if self.auto_config_url.is_some() {
            notes.push("Go ignores AutoConfigURL (PAC scripts) entirely");
        }
        notes
    }
}

/// Adds `default_scheme://` unless `server` already has a scheme.
fn with_scheme(server: &str, default_scheme: &str) -> String {
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("{default_scheme}://{server}")
    }
}

/// Matches `text` against `pattern`, where `*` matches any (possibly
/// empty) run of characters. Linear-time backtracking on the last `*`.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((spi, sti)) = star {
            pi = spi + 1;
            ti = sti + 1;
            star = Some((spi, sti + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    // `\` line continuations would eat the indentation, hence concat!.
    const REG_OUTPUT: &str = concat!(
        "\r\n",
        "HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings\r\n",
        "    DisableCachingOfSSLPages    REG_DWORD    0x0\r\n",
        "    User Agent    REG_SZ    Mozilla/4.0 (compatible; MSIE 8.0; Win32)\r\n",
        "    ProxyEnable    REG_DWORD    0x1\r\n",
        "    ProxyServer    REG_SZ    http=proxy.corp:8080;https=sproxy.corp:8443;socks=socks.corp:1080\r\n",
        "    ProxyOverride    REG_SZ    *.corp.example;10.*;<local>\r\n",
        "    AutoConfigURL    REG_SZ    http://wpad.corp/wpad.dat\r\n",
        "\r\n",
        "HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings\\5.0\r\n",
        "HKEY_CURRENT_USER\\Software\\Microsoft\\Windows\\CurrentVersion\\Internet Settings\\Cache\r\n",
    );

    #[test]
    fn parses_reg_query_output() {
        let raw = parse_reg_query(REG_OUTPUT);
        assert_eq!(
            raw,
            RawValues {
                proxy_enable: Some(1),
                proxy_server: Some(
                    "http=proxy.corp:8080;https=sproxy.corp:8443;socks=socks.corp:1080".into()
                ),
                proxy_override: Some("*.corp.example;10.*;<local>".into()),
                auto_config_url: Some("http://wpad.corp/wpad.dat".into()),
            }
        );
    }

    #[test]
    fn reg_query_edge_cases() {
        assert_eq!(parse_reg_query(""), RawValues::default());
        let raw = parse_reg_query(concat!(
            "HKEY_CURRENT_USER\\X\n    ProxyEnable    REG_DWORD    0x0\n",
            "    ProxyServer    REG_SZ\ngarbage line\n    ProxyOverride    REG_SZ    \n",
            "HKEY_CURRENT_USER\\X\\Sub\n    ProxyEnable    REG_DWORD    0x1\n",
        ));
        assert_eq!(raw.proxy_enable, Some(0));
        assert_eq!(raw.proxy_server.as_deref(), Some(""));
        assert_eq!(raw.proxy_override.as_deref(), Some(""));
        assert_eq!(parse_dword("0xffffffff"), Some(u32::MAX));
        assert_eq!(parse_dword("0xzz"), None);
    }

    #[test]
    fn per_protocol_servers() {
        let s = WindowsProxySettings::from_raw(&parse_reg_query(REG_OUTPUT));
        assert!(s.enabled && s.bypass_local);
        assert_eq!(
            s.proxy_for("http", "www.example.org").as_deref(),
            Some("http://proxy.corp:8080")
        );
        assert_eq!(
            s.proxy_for("HTTPS", "www.example.org").as_deref(),
            Some("http://sproxy.corp:8443")
        );
        assert_eq!(
            s.proxy_for("ftp", "ftp.example.org").as_deref(),
            Some("socks4://socks.corp:1080")
        );
        assert_eq!(s.proxy_for("gopher", "x.org"), None);
        assert_eq!(s.proxy_for("http", "intranet"), None);
        assert_eq!(s.proxy_for("http", "a.corp.example"), None);
        assert_eq!(s.proxy_for("http", "10.1.2.3"), None);
        assert_eq!(s.proxy_for("http", "127.0.0.1"), None);
        assert_eq!(s.go_notes().len(), 3);
    }

    #[test]
    fn single_server_and_disabled() {
        let mut raw = RawValues {
            proxy_enable: Some(1),
            proxy_server: Some("proxy:3128".into()),
            ..RawValues::default()
        };
        let s = WindowsProxySettings::from_raw(&raw);
        for scheme in ["http", "https", "ftp"] {
            assert_eq!(
                s.proxy_for(scheme, "x.org").as_deref(),
                Some("http://proxy:3128")
            );
        }
        raw.proxy_enable = Some(0);
        let s = WindowsProxySettings::from_raw(&raw);
        assert_eq!(s.proxy_for("http", "x.org"), None);
        assert!(s.go_notes().is_empty());
    }

    #[test]
    fn server_list_parsing() {
        let s = ProxyServers::parse(" http=h:1 ; https=https://s:2;bogus=x;http=ignored:9;;");
        assert_eq!(s.http.as_deref(), Some("h:1"));
        assert_eq!(s.https.as_deref(), Some("https://s:2"));
        assert!(s.all.is_none() && s.ftp.is_none() && s.socks.is_none());
        assert!(ProxyServers::parse("").is_empty());
    }

    #[test]
    fn bypass_rules() {
        let s = WindowsProxySettings::from_raw(&RawValues {
            proxy_override: Some("<LOCAL>; Example.com ;*.svc.*;192.168.*".into()),
            ..RawValues::default()
        });
        assert!(s.bypass("printer"));
        assert!(!s.bypass("fe80::1")); // IP literal, not a "local" name
        assert!(s.bypass("[::1]"));
        assert!(s.bypass("localhost"));
        assert!(s.bypass("EXAMPLE.com"));
        assert!(!s.bypass("www.example.com"));
        assert!(s.bypass("a.svc.cluster"));
        assert!(s.bypass("192.168.0.9"));
        assert!(!s.bypass("192.169.0.9"));
    }

    #[test]
    fn glob() {
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("**.x", "a.x"));
        assert!(!glob_match("x", "xx"));
    }
}
