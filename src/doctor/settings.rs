//! Which proxy applies to the URL and why, and the URL itself taken the way
//! curl takes it (`host`, `host:port`, `host/path` mean `http://…`).

use super::{DoctorError, Options};
use crate::upstream::{Host, Target, UpstreamSpec};

/// Parses a URL like curl: without `scheme://`, `http://` is assumed.
/// Only `http` and `https` are accepted.
pub fn normalize_url(raw: &str) -> Result<url::Url, DoctorError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(DoctorError::Url(raw.to_string(), "empty URL".into()));
    }
    let with_scheme = if trimmed.contains("://") {
        trimmed.to_string()
    } else {
        format!("http://{trimmed}")
    };
    let url = url::Url::parse(&with_scheme)
        .map_err(|e| DoctorError::Url(raw.to_string(), e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        s => {
            return Err(DoctorError::Url(
                raw.to_string(),
                format!("unsupported scheme {s}: doctor fetches http:// and https:// URLs"),
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(DoctorError::Url(raw.to_string(), "no host".into()));
    }
    Ok(url)
}

/// Which proxy applies to the URL, and why.
pub fn choose_proxy(
    opts: &Options,
    target: &Target,
    https: bool,
) -> Result<(Option<UpstreamSpec>, String), DoctorError> {
    let scheme = if https { "https" } else { "http" };
    if let Some(u) = &opts.upstream {
        return Ok((
            (!u.is_direct()).then(|| u.clone()),
            format!("upstream {:?}", u.name),
        ));
    }
    if let Some(p) = &opts.proxy {
        let spec =
            UpstreamSpec::parse("--proxy", p).map_err(|e| DoctorError::Proxy(e.to_string()))?;
        return Ok(((!spec.is_direct()).then_some(spec), "--proxy flag".into()));
    }
    if let Some(cfg) = &opts.config {
        if cfg.no_proxy.bypass(&target.host.bare(), target.port) {
            return Ok((
                None,
                format!("{}: no_proxy matches {}", cfg.source_name, target.host),
            ));
        }
        let up = cfg
            .upstreams
            .iter()
            .filter(|u| {
                if https {
                    u.applies.tunnel
                } else {
                    u.applies.plain
                }
            })
            .min_by_key(|u| u.priority);
        return Ok(match up {
            Some(u) if !u.spec.is_direct() => (
                Some(u.spec.clone()),
                format!("{}: upstream {:?}", cfg.source_name, u.spec.name),
            ),
            _ => (None, format!("{}: no upstream: direct", cfg.source_name)),
        });
    }
    match opts.env.proxy_for(scheme, &target.host.bare(), target.port) {
        Some(p) => {
            let spec = UpstreamSpec::parse(p.var, &p.url)
                .map_err(|e| DoctorError::Proxy(format!("{}: {e}", p.var)))?;
            Ok((
                Some(spec),
                format!(
                    "environment variable {} (as a Go program would use it)",
                    p.var
                ),
            ))
        }
        None => {
            let why = if target.host.bare() == "localhost"
                || matches!(&target.host, Host::Ip(ip) if ip.is_loopback())
            {
                "loopback targets are never proxied (Go semantics): direct".to_string()
            } else if !opts.env.no_proxy_raw.is_empty()
                && opts.env.no_proxy.bypass(&target.host.bare(), target.port)
            {
                format!(
                    "NO_PROXY ({}) matches {}: direct",
                    opts.env.no_proxy_raw, target.host
                )
            } else {
                format!("no {}_PROXY set: direct", scheme.to_ascii_uppercase())
            };
            Ok((None, why))
        }
    }
}

/// Reads the Windows system proxy (Go ignores it; doctor reports it).
pub fn windows_settings() -> Option<crate::config::windows::WindowsProxySettings> {
    #[cfg(windows)]
    {
        crate::config::windows::read_registry()
            .ok()
            .map(|raw| crate::config::windows::WindowsProxySettings::from_raw(&raw))
    }
    #[cfg(not(windows))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_url;

    #[test]
    fn urls_are_taken_like_curl() {
        let ok = |raw: &str, want: &str| assert_eq!(normalize_url(raw).unwrap().as_str(), want);
        ok("example.com", "http://example.com/");
        ok("example.com:8080", "http://example.com:8080/");
        ok("localhost:8080/a?b=1", "http://localhost:8080/a?b=1");
        ok("127.0.0.1:81/x", "http://127.0.0.1:81/x");
        ok("[::1]:81", "http://[::1]:81/");
        ok("https://example.com/p", "https://example.com/p");
        for bad in [
            "",
            "ftp://example.com/",
            "http://",
            "socks5://h:1",
            "http://exa mple.com/",
        ] {
            assert!(normalize_url(bad).is_err(), "{bad:?} accepted");
        }
    }
}
