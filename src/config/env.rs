//! The proxy environment (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, ...) as
//! Go's `net/http.ProxyFromEnvironment` reads it, plus the problems a
//! doctor should point out.
//!
//! Precedence follows Go: the upper-case variable wins over the lower-case
//! one, an empty value counts as unset, and `HTTP_PROXY` is ignored when
//! `REQUEST_METHOD` is set (CGI: a client could inject it through a
//! `Proxy:` request header, see <https://golang.org/s/cgihttpproxy>).
//!
//! One deliberate extension: `ALL_PROXY`/`all_proxy` is used as a fallback
//! for both schemes, as curl does. **Go ignores `ALL_PROXY`**; every
//! [`EnvProxy`] says which variable it came from so callers can tell.
//!
//! The variables come from an injectable lookup so that tests never read or
//! mutate the process environment.

use std::fmt;

use super::noproxy::NoProxy;
use super::redact::{redact, userinfo_end};

/// One proxy setting taken from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvProxy {
    /// The variable the value came from, e.g. `"https_proxy"`.
    pub var: &'static str,
    /// The value exactly as set. May contain credentials: log it only
    /// through [`redact`].
    pub raw: String,
    /// The value as Go uses it: `http://` is prepended when there is no
    /// scheme or the scheme is not `http`, `https` or `socks5`.
    pub url: String,
}

/// The parsed proxy environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    /// Proxy for `http://` URLs.
    pub http: Option<EnvProxy>,
    /// Proxy for `https://` URLs.
    pub https: Option<EnvProxy>,
    /// The parsed `NO_PROXY` list.
    pub no_proxy: NoProxy,
    /// The `NO_PROXY` value as set (empty when unset).
    pub no_proxy_raw: String,
    /// `REQUEST_METHOD` is set, so Go refuses `HTTP_PROXY`.
    pub cgi: bool,
    /// Problems worth telling the user about.
    pub findings: Vec<Finding>,
}

/// Something questionable about the proxy environment. Values embedded in
/// findings are already redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// An HTTP proxy is set but no HTTPS proxy: Go sends `https://`
    /// requests directly (only `ALL_PROXY`-aware tools like curl do not).
    HttpsProxyMissing {
        /// The variable providing the HTTP proxy.
        http_var: &'static str,
        /// `ALL_PROXY` is set and covers HTTPS for curl (not for Go).
        all_proxy_fallback: bool,
    },
    /// Both spellings are set to different values.
    CaseConflict {
        /// The upper-case name (this one wins in Go).
        upper: &'static str,
        /// The lower-case name.
        lower: &'static str,
    },
    /// The value has no `scheme://`; Go (and we) assume `http://`.
    MissingScheme {
        /// The variable.
        var: &'static str,
        /// The redacted value.
        value: String,
    },
    /// The scheme is not one Go supports (`http`, `https`, `socks5`). Go
    /// then prepends `http://` to the whole value, which rarely works.
    UnknownScheme {
        /// The variable.
        var: &'static str,
        /// The scheme as written.
        scheme: String,
    },
    /// The credentials contain characters that must be percent-encoded.
    UnescapedCredentials {
        /// The variable.
        var: &'static str,
        /// The offending characters, in order of first appearance.
        chars: Vec<char>,
    },
    /// `REQUEST_METHOD` is set, so Go refuses to use `HTTP_PROXY`.
    CgiHttpProxyIgnored {
        /// The variable that is being ignored.
        var: &'static str,
    },
    /// A proxy comes from `ALL_PROXY`, which Go does not read.
    AllProxyNotUsedByGo {
        /// `ALL_PROXY` or `all_proxy`.
        var: &'static str,
    },
}

impl Finding {
    /// A one-line explanation for humans.
    pub fn message(&self) -> String {
        match self {
            Self::HttpsProxyMissing {
                http_var,
                all_proxy_fallback,
            } => {
                let mut msg = format!(
                    "{http_var} is set but HTTPS_PROXY/https_proxy is not: \
                     Go programs send https:// requests directly"
                );
                if *all_proxy_fallback {
                    msg.push_str(" (curl would use ALL_PROXY for them)");
                }
                msg
            }
            Self::CaseConflict { upper, lower } => format!(
                "{upper} and {lower} are both set and differ; Go uses {upper} \
                 (curl reads only the lower-case http_proxy for http)"
            ),
            Self::MissingScheme { var, value } => {
                format!("{var}={value} has no scheme; http:// is assumed")
            }
            Self::UnknownScheme { var, scheme } => format!(
                "{var} uses scheme {scheme:?}, which Go does not support \
                 (only http, https, socks5); Go treats the whole value as an http:// host"
            ),
            Self::UnescapedCredentials { var, chars } => {
                let list: Vec<String> = chars.iter().map(|c| format!("{c:?}")).collect();
                format!(
                    "{var} has credentials with unescaped {}; percent-encode them \
                     (e.g. @ as %40) or the URL is split in the wrong place",
                    list.join(", ")
                )
            }
            Self::CgiHttpProxyIgnored { var } => format!(
                "{var} is ignored because REQUEST_METHOD is set (CGI); \
                 Go refuses such requests"
            ),
            Self::AllProxyNotUsedByGo { var } => {
                format!("{var} is used as a fallback, but Go programs ignore it")
            }
        }
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

/// The schemes Go's `parseProxy` accepts as is.
const GO_SCHEMES: [&str; 3] = ["http", "https", "socks5"];

impl ProxyEnv {
    /// Reads the real process environment.
    pub fn from_process_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the environment from `lookup` (variable name → value).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let mut findings = Vec::new();
        let mut pick = |upper: &'static str, lower: &'static str| {
            let (u, l) = (get(upper), get(lower));
            if let (Some(u), Some(l)) = (&u, &l) {
                if u != l {
                    findings.push(Finding::CaseConflict { upper, lower });
                }
            }
            u.map(|v| (upper, v)).or(l.map(|v| (lower, v)))
        };

        let mut http = pick("HTTP_PROXY", "http_proxy");
        let https = pick("HTTPS_PROXY", "https_proxy");
        let all = pick("ALL_PROXY", "all_proxy");
        let no_proxy = pick("NO_PROXY", "no_proxy");

        let cgi = get("REQUEST_METHOD").is_some();
        if cgi {
            if let Some((var, _)) = http.take() {
                findings.push(Finding::CgiHttpProxyIgnored { var });
            }
        }
        if https.is_none() {
            if let Some((http_var, _)) = &http {
                findings.push(Finding::HttpsProxyMissing {
                    http_var,
                    all_proxy_fallback: all.is_some(),
                });
            }
        }

        let mut resolve = |chosen: Option<(&'static str, String)>| {
            let (var, raw) = chosen.or_else(|| all.clone())?;
            if var.eq_ignore_ascii_case("ALL_PROXY") {
                let finding = Finding::AllProxyNotUsedByGo { var };
                if !findings.contains(&finding) {
                    findings.push(finding);
                }
            }
            Some(env_proxy(var, raw, &mut findings))
        };
        let http = resolve(http);
        let https = resolve(https);

        let no_proxy_raw = no_proxy.map(|(_, v)| v).unwrap_or_default();
        Self {
            http,
            https,
            no_proxy: NoProxy::from_env_value(&no_proxy_raw),
            no_proxy_raw,
            cgi,
            findings,
        }
    }

    /// The proxy Go would use for a `scheme://host:port` request, `None`
    /// for a direct connection.
    ///
    /// `scheme` is `"http"` or `"https"` (anything else is direct, as in
    /// Go); `port` is the effective port, including the scheme's default.
    pub fn proxy_for(&self, scheme: &str, host: &str, port: u16) -> Option<&EnvProxy> {
        let proxy = match scheme {
            "https" => self.https.as_ref(),
            "http" => self.http.as_ref(),
            _ => None,
        }?;
        (!self.no_proxy.bypass(host, port)).then_some(proxy)
    }
}

/// Normalises one proxy value the way Go's `parseProxy` does and records
/// findings about it.
fn env_proxy(var: &'static str, raw: String, findings: &mut Vec<Finding>) -> EnvProxy {
    let url = match scheme_of(&raw) {
        Some((scheme, rest)) if GO_SCHEMES.contains(&scheme.to_ascii_lowercase().as_str()) => {
            format!("{}:{rest}", scheme.to_ascii_lowercase())
        }
        scheme => {
            match scheme {
                Some((scheme, rest)) if rest.starts_with("//") => {
                    findings.push(Finding::UnknownScheme {
                        var,
                        scheme: scheme.to_owned(),
                    });
                }
                // `proxy:3128` parses as scheme "proxy" in Go; it is a
                // missing scheme all the same.
                _ => findings.push(Finding::MissingScheme {
                    var,
                    value: redact(&raw),
                }),
            }
            format!("http://{raw}")
        }
    };
    let chars = bad_credential_chars(&raw);
    if !chars.is_empty() {
        findings.push(Finding::UnescapedCredentials { var, chars });
    }
    EnvProxy { var, raw, url }
}

/// Splits off a URL scheme as Go's `getScheme` recognises it:
/// `[A-Za-z][A-Za-z0-9+.-]*:`. Returns the scheme and what follows the `:`.
fn scheme_of(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once(':')?;
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (first_ok && rest_ok).then_some((scheme, rest))
}

/// Characters in the userinfo of `raw` that should have been
/// percent-encoded: `@ / ? #`, whitespace, and `%` not starting a `%XX`
/// escape. A `:` inside the password is legal and not reported.
fn bad_credential_chars(raw: &str) -> Vec<char> {
    let rest = raw.find("://").map_or(raw, |i| &raw[i + 3..]);
    let Some(end) = userinfo_end(rest) else {
        return Vec::new();
    };
    let userinfo = &rest[..end];
    let mut bad = Vec::new();
    for (i, c) in userinfo.char_indices() {
        let is_bad = match c {
            '@' | '/' | '?' | '#' => true,
            '%' => !userinfo
                .get(i + 1..i + 3)
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit())),
            c => c.is_whitespace(),
        };
        if is_bad && !bad.contains(&c) {
            bad.push(c);
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> ProxyEnv {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyEnv::from_lookup(move |k| map.get(k).cloned())
    }

    #[test]
    fn upper_case_wins_and_conflict_is_reported() {
        let e = env(&[
            ("HTTP_PROXY", "http://up:1"),
            ("http_proxy", "http://low:1"),
            ("https_proxy", "http://s:2"),
        ]);
        let http = e.http.as_ref().map(|p| (p.var, p.url.as_str()));
        assert_eq!(http, Some(("HTTP_PROXY", "http://up:1")));
        assert_eq!(e.https.as_ref().map(|p| p.var), Some("https_proxy"));
        assert_eq!(
            e.findings,
            vec![Finding::CaseConflict {
                upper: "HTTP_PROXY",
                lower: "http_proxy"
            }]
        );
    }

    #[test]
    fn empty_values_count_as_unset() {
        let e = env(&[("HTTP_PROXY", ""), ("http_proxy", "http://low:1")]);
        assert_eq!(e.http.as_ref().map(|p| p.var), Some("http_proxy"));
    }

    #[test]
    fn https_missing_is_reported() {
        let e = env(&[("HTTP_PROXY", "http://p:1")]);
        assert!(e.https.is_none());
        assert_eq!(
            e.findings,
            vec![Finding::HttpsProxyMissing {
                http_var: "HTTP_PROXY",
                all_proxy_fallback: false
            }]
        );
        assert!(e.findings[0].message().contains("directly"));
    }

    #[test]
    fn all_proxy_is_a_non_go_fallback() {
        let e = env(&[
            ("all_proxy", "socks5://s:1080"),
            ("HTTP_PROXY", "http://p:1"),
        ]);
        assert_eq!(e.http.as_ref().map(|p| p.var), Some("HTTP_PROXY"));
        assert_eq!(e.https.as_ref().map(|p| p.var), Some("all_proxy"));
        assert!(e
            .findings
            .contains(&Finding::AllProxyNotUsedByGo { var: "all_proxy" }));
        assert!(e.findings.contains(&Finding::HttpsProxyMissing {
            http_var: "HTTP_PROXY",
            all_proxy_fallback: true
        }));
    }

    #[test]
    fn cgi_ignores_http_proxy() {
        let e = env(&[
            ("REQUEST_METHOD", "GET"),
            ("HTTP_PROXY", "http://evil:1"),
            ("HTTPS_PROXY", "http://s:1"),
        ]);
        assert!(e.cgi);
        assert!(e.http.is_none());
        assert!(e.https.is_some());
        assert!(e
            .findings
            .contains(&Finding::CgiHttpProxyIgnored { var: "HTTP_PROXY" }));
    }

    #[test]
    fn normalisation_like_go() {
        let cases = [
            ("proxy:3128", "http://proxy:3128", true),
            ("10.0.0.1:3128", "http://10.0.0.1:3128", true),
            ("HTTP://P:1", "http://P:1", false),
            ("socks5://s:1080", "socks5://s:1080", false),
            ("socks5h://s:1080", "http://socks5h://s:1080", false),
        ];
        for (raw, url, missing) in cases {
            let e = env(&[("HTTPS_PROXY", raw)]);
            let p = e.https.as_ref().map(|p| p.url.as_str());
            assert_eq!(p, Some(url), "{raw}");
            let has_missing = e
                .findings
                .iter()
                .any(|f| matches!(f, Finding::MissingScheme { .. }));
            assert_eq!(has_missing, missing, "{raw}");
        }
        let e = env(&[("HTTPS_PROXY", "socks5h://s:1080")]);
        assert_eq!(
            e.findings,
            vec![Finding::UnknownScheme {
                var: "HTTPS_PROXY",
                scheme: "socks5h".into()
            }]
        );
    }

    #[test]
    fn credential_findings() {
        let bad = |raw: &str| bad_credential_chars(raw);
        assert_eq!(bad("http://u:p@ss@h:1"), vec!['@']);
        assert_eq!(bad("http://u:p/s#s@h:1"), vec!['/', '#']);
        assert_eq!(bad("http://u:100%@h:1"), vec!['%']);
        assert_eq!(bad("http://u:a%4"), Vec::<char>::new());
        assert_eq!(bad("http://u:p%40ss:x@h:1"), Vec::<char>::new());
        assert_eq!(bad("u:pa ss@h:1"), vec![' ']);
        assert_eq!(bad("http://h:1"), Vec::<char>::new());
        let e = env(&[("HTTPS_PROXY", "http://u:p@ss@h:1")]);
        let msg = e.findings[0].message();
        assert!(msg.contains("'@'") && !msg.contains("p@ss"), "{msg}");
        // Redacted values only in messages.
        let e = env(&[("HTTPS_PROXY", "u:secret@h:1")]);
        assert!(e.findings.iter().all(|f| !f.message().contains("secret")));
    }

    #[test]
    fn proxy_for_uses_scheme_and_no_proxy() {
        let e = env(&[
            ("HTTP_PROXY", "http://p:1"),
            ("HTTPS_PROXY", "http://s:2"),
            ("no_proxy", "internal.corp,10.0.0.0/8"),
        ]);
        let url = |s: &str, h: &str, p: u16| e.proxy_for(s, h, p).map(|p| p.url.as_str());
        assert_eq!(url("http", "example.com", 80), Some("http://p:1"));
        assert_eq!(url("https", "example.com", 443), Some("http://s:2"));
        assert_eq!(url("ftp", "example.com", 21), None);
        assert_eq!(url("https", "a.internal.corp", 443), None);
        assert_eq!(url("https", "10.2.3.4", 443), None);
        assert_eq!(url("http", "localhost", 80), None);
        assert_eq!(url("http", "[::1]", 80), None);
        assert_eq!(e.no_proxy_raw, "internal.corp,10.0.0.0/8");
    }
}
