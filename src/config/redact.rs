//! Credential redaction for proxy URLs, used whenever a proxy value is
//! logged or shown in a finding.
//!
//! Proxy URLs routinely carry `user:password@`, and users frequently get the
//! escaping wrong (a raw `@` or `/` in the password). A parser-based
//! redactor would give up on exactly those malformed values and then log the
//! secret verbatim, so this works on the raw text and errs on the side of
//! hiding too much.

/// Replaces the credentials in `url` with `***`.
///
/// * `http://user:pass@host:3128` → `http://user:***@host:3128`
/// * `http://token@host` → `http://***@host` (a lone user part is often a
///   token, so it is hidden too)
/// * malformed credentials (a raw `@`, `/`, `?` or `#` inside them) →
///   `http://***:***@host:3128`
/// * values without credentials, including non-URLs, are returned as is.
///
/// Never panics, whatever the input.
pub fn redact(url: &str) -> String {
    // Most URLs carry no user info: the common case costs one scan.
    if !url.contains('@') {
        return url.to_owned();
    }
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let Some(at) = userinfo_end(rest) else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    if userinfo.is_empty() {
        return url.to_owned();
    }
    let masked = if is_well_formed_userinfo(userinfo) {
        match userinfo.split_once(':') {
            Some((user, _)) => format!("{user}:***"),
            None => "***".to_owned(),
        }
    } else {
        "***:***".to_owned()
    };
    format!("{}{masked}{}", &url[..start], &rest[at..])
}

/// A webhook URL for display: its user info, path and query often carry
/// the secret (tokens in Slack-style paths, `?key=`), so only the scheme and
/// host remain: `https://hooks.example/***`.
pub fn redact_webhook(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path() == "/" && u.query().is_none() {
                "/"
            } else {
                "/***"
            };
            format!("{}://{host}{port}{rest}", u.scheme())
        }
        Err(_) => "***".to_string(),
    }
}

/// Hides every secret-bearing field of a configuration before it is shown
/// (`check`): the admin token, webhook URLs, credentials in health and
/// backend URLs. Upstream URLs and `[auth] users` are redacted by the
/// caller, which knows their parsed form.
pub fn redact_file(f: &mut super::schema::FileConfig) {
    if f.admin.token.is_some() {
        f.admin.token = Some("***".into());
    }
    for a in &mut f.alert {
        if let Some(w) = &a.webhook {
            a.webhook = Some(redact_webhook(w));
        }
    }
    if let Some(u) = &f.health.url {
        f.health.url = Some(redact(u));
    }
    for r in &mut f.route {
        for b in &mut r.backend {
            let red = redact(b.url.get_ref());
            b.url = toml::Spanned::new(0..0, red);
        }
    }
}

/// Position of the `@` that ends the userinfo in `rest` (the text after
/// `scheme://`), if there are credentials at all.
///
/// First the RFC 3986 way: the authority ends at the first `/`, `?` or `#`,
/// and the userinfo at its last `@`. If that finds nothing but there is an
/// `@` later whose right-hand side looks like a bare `host[:port][/]`, the
/// password contains an unescaped delimiter, and everything before that `@`
/// is treated as credentials.
pub(crate) fn userinfo_end(rest: &str) -> Option<usize> {
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if let Some(at) = rest[..authority_end].rfind('@') {
        return Some(at);
    }
    let at = rest.rfind('@')?;
    let after = &rest[at + 1..];
    let after = after.strip_suffix('/').unwrap_or(after);
    let looks_like_host = !after.is_empty() && !after.contains(['/', '?', '#']);
    looks_like_host.then_some(at)
}

/// True when the userinfo contains no characters that break URL parsing.
fn is_well_formed_userinfo(userinfo: &str) -> bool {
    !userinfo.contains(['@', '/', '?', '#'])
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redacts_password_keeps_user() {
        assert_eq!(
            redact("http://alice:s3cret@proxy:3128"),
            "http://alice:***@proxy:3128"
        );
        assert_eq!(redact("alice:s3cret@proxy:3128"), "alice:***@proxy:3128");
        assert_eq!(redact("socks5://tok@proxy"), "socks5://***@proxy");
    }

    #[test]
    fn malformed_credentials_are_fully_hidden() {
        assert_eq!(
            redact("http://alice:p@ss@proxy:3128"),
            "http://***:***@proxy:3128"
        );
        assert_eq!(
            redact("http://alice:pa/ss@proxy:3128/"),
            "http://***:***@proxy:3128/"
        );
        assert_eq!(
            redact("http://alice:pa#ss@proxy:3128"),
            "http://***:***@proxy:3128"
        );
        assert_eq!(redact("http://a:b?c@proxy"), "http://***:***@proxy");
    }

    #[test]
    fn webhooks_keep_only_scheme_and_host() {
        use super::redact_webhook;
        assert_eq!(
            redact_webhook("https://u:p@hooks.example:8443/services/T0/B0/XyZ?key=k"),
            "https://hooks.example:8443/***"
        );
        assert_eq!(
            redact_webhook("http://hooks.example/"),
            "http://hooks.example/"
        );
        assert_eq!(redact_webhook("not a url secret"), "***");
    }

    #[test]
    fn leaves_other_values_alone() {
        for v in [
            "",
            "http://proxy:3128",
            "proxy:3128",
            "http://proxy/path?mail=a@b/c",
            "://",
            "@",
            "é@ü:ß",
        ] {
            let r = redact(v);
            assert!(!r.is_empty() || v.is_empty(), "{v:?} -> {r:?}");
        }
        assert_eq!(redact("http://proxy:3128"), "http://proxy:3128");
        assert_eq!(
            redact("http://proxy/path?mail=a@b/c"),
            "http://proxy/path?mail=a@b/c"
        );
        assert_eq!(redact("@"), "@");
        assert_eq!(redact("http://@proxy"), "http://@proxy");
        assert_eq!(redact("é:ü@ß"), "é:***@ß");
    }
}
