//! Validation of the configuration file, one section at a time: each
//! function checks its section and returns the typed settings, with errors
//! that name the file, line, column and field.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;

use super::load::{AdmissionSettings, ConfigError, Ctx, Listener, UpstreamEntry};
use super::schema::FileConfig;
use crate::upstream::{Credentials, UpstreamSpec};

/// `[[upstream]]`: names unique and non-empty, URLs parsed, weights ≥ 1.
pub(super) fn upstreams(
    cx: &Ctx<'_>,
    file: &FileConfig,
) -> Result<Vec<UpstreamEntry>, ConfigError> {
    let mut upstreams = Vec::new();
    let mut names = std::collections::HashSet::new();
    for u in &file.upstream {
        if u.name.trim().is_empty() {
            return cx.at(&u.url, "upstream.name", "must not be empty".into());
        }
        if !names.insert(u.name.clone()) {
            return cx.at(
                &u.url,
                "upstream.name",
                format!("duplicate upstream name {:?}", u.name),
            );
        }
        let spec = match UpstreamSpec::parse(&u.name, u.url.get_ref()) {
            Ok(s) => s,
            Err(e) => {
                return cx.at(&u.url, "upstream.url", format!(
                    "{e}; expected http://[user:pass@]host:port, https://…, socks5://…, socks5h://… or \"direct\""
                ))
            }
        };
        if u.weight == 0 {
            return cx.at(&u.url, "upstream.weight", "must be at least 1".into());
        }
        upstreams.push(u.entry(spec, "config"));
    }
    Ok(upstreams)
}

/// `[resolve]`: static name → IP overrides.
pub(super) fn resolve(
    cx: &Ctx<'_>,
    file: &FileConfig,
) -> Result<HashMap<String, Vec<IpAddr>>, ConfigError> {
    let mut resolve = HashMap::new();
    for (name, ip) in &file.resolve {
        match ip.get_ref().trim().parse::<IpAddr>() {
            Ok(a) => {
                resolve.insert(name.to_ascii_lowercase(), vec![a]);
            }
            Err(_) => {
                return cx.at(
                    ip,
                    &format!("resolve.{name}"),
                    format!("{:?} is not an IP address", ip.get_ref()),
                )
            }
        }
    }
    Ok(resolve)
}

/// `[auth]`: inbound users and the client allow-list.
pub(super) fn admission(cx: &Ctx<'_>, file: &FileConfig) -> Result<AdmissionSettings, ConfigError> {
    let mut users = Vec::new();
    for u in &file.auth.users {
        match u.get_ref().split_once(':') {
            Some((name, pass)) if !name.is_empty() => users.push(Credentials {
                username: name.to_string(),
                password: pass.to_string(),
            }),
            _ => return cx.at(u, "auth.users", "expected \"user:password\"".into()),
        }
    }
    let mut allow = Vec::new();
    for a in &file.auth.allow {
        let s = a.get_ref().trim();
        let net = s
            .parse::<IpNet>()
            .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
        match net {
            Ok(n) => allow.push(n),
            Err(_) => {
                return cx.at(
                    a,
                    "auth.allow",
                    format!("{s:?} is not a CIDR or IP address"),
                )
            }
        }
    }
    Ok(AdmissionSettings { users, allow })
}

/// `no_proxy`, `[timeouts]` and `[limits]`.
pub(super) fn limits(cx: &Ctx<'_>, file: &FileConfig) -> Result<(), ConfigError> {
    for np in &file.no_proxy {
        if np.get_ref().trim().is_empty() {
            return cx.at(np, "no_proxy", "empty entry".into());
        }
    }
    let t = &file.timeouts;
    for (name, d) in [
        ("timeouts.connect", t.connect),
        ("timeouts.handshake", t.handshake),
        ("timeouts.tls", t.tls),
        ("timeouts.client_header", t.client_header),
        ("timeouts.idle", t.idle),
        ("timeouts.response_head", t.response_head),
        ("timeouts.body_idle", t.body_idle),
        ("timeouts.expect_continue", t.expect_continue),
    ] {
        if d.0.is_zero() {
            return cx.err(None, name, "must be greater than zero".into());
        }
    }
    if let Err(e) = t.tcp_keepalive.settings() {
        return cx.err(None, "timeouts.tcp_keepalive", e);
    }
    if file.limits.max_connections == 0 {
        return cx.err(None, "limits.max_connections", "must be at least 1".into());
    }
    if file.limits.max_header_bytes < 1024 {
        return cx.err(
            None,
            "limits.max_header_bytes",
            "must be at least 1024".into(),
        );
    }
    Ok(())
}

/// `[pool]`.
pub(super) fn pool(cx: &Ctx<'_>, file: &FileConfig) -> Result<(), ConfigError> {
    let p = &file.pool;
    if p.upstream_idle.0.is_zero() || p.idle_timeout.0.is_zero() {
        return cx.err(
            None,
            if p.upstream_idle.0.is_zero() {
                "pool.upstream_idle"
            } else {
                "pool.idle_timeout"
            },
            "must be greater than zero".into(),
        );
    }
    if p.max_attempts == 0 {
        return cx.err(None, "pool.max_attempts", "must be at least 1".into());
    }
    if crate::config::adaptive::Adaptive::parse(&p.hedge_after).is_none() {
        return cx.err(
            None,
            "pool.hedge_after",
            format!(
                "{:?}: expected \"auto\", \"off\" or a duration like \"200ms\"",
                p.hedge_after
            ),
        );
    }
    if crate::config::adaptive::Adaptive::parse(&p.race_after).is_none() {
        return cx.err(
            None,
            "pool.race_after",
            format!(
                "{:?}: expected \"auto\", \"off\" or a duration like \"200ms\"",
                p.race_after
            ),
        );
    }
    if p.max_ejection_percent > 100 {
        return cx.err(None, "pool.max_ejection_percent", "must be 0..=100".into());
    }
    Ok(())
}

/// `[health]` and `[breaker]`.
pub(super) fn health(cx: &Ctx<'_>, file: &FileConfig) -> Result<(), ConfigError> {
    let h = &file.health;
    if h.rise == 0 || h.fall == 0 {
        return cx.err(None, "health.rise/fall", "must be at least 1".into());
    }
    if let Some(u) = &h.url {
        if url::Url::parse(u)
            .map(|u| u.scheme() != "http")
            .unwrap_or(true)
        {
            return cx.err(
                None,
                "health.url",
                format!("{u:?}: expected an http:// URL"),
            );
        }
    }
    if !(0.0..=1.0).contains(&file.breaker.failure_ratio) {
        return cx.err(
            None,
            "breaker.failure_ratio",
            "must be between 0 and 1".into(),
        );
    }
    if file.breaker.failure_threshold == 0 || file.breaker.half_open_trials == 0 {
        return cx.err(
            None,
            "breaker",
            "failure_threshold and half_open_trials must be at least 1".into(),
        );
    }
    Ok(())
}

/// `[admin]`: the address and the token (from the file or the environment).
pub(super) fn admin(
    cx: &Ctx<'_>,
    file: &FileConfig,
) -> Result<(Option<SocketAddr>, Option<String>), ConfigError> {
    let admin_addr: Option<SocketAddr> = if file.admin.enabled {
        match file.admin.addr.get_ref().trim().parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                return cx.at(
                    &file.admin.addr,
                    "admin.addr",
                    format!("{:?} is not IP:port", file.admin.addr.get_ref()),
                )
            }
        }
    } else {
        None
    };
    let admin_token = match (&file.admin.token, &file.admin.token_env) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(var)) => match std::env::var(var) {
            Ok(t) if !t.is_empty() => Some(t),
            _ => {
                return cx.err(
                    None,
                    "admin.token_env",
                    format!("environment variable {var} is not set"),
                )
            }
        },
        (None, None) => None,
    };
    Ok((admin_addr, admin_token))
}

/// `[[alert]]`.
pub(super) fn alerts(cx: &Ctx<'_>, file: &FileConfig) -> Result<(), ConfigError> {
    for a in &file.alert {
        if a.on.is_empty() {
            return cx.err(None, "alert.on", "list at least one event".into());
        }
        for k in &a.on {
            if !crate::events::KINDS.contains(&k.as_str()) {
                return cx.err(
                    None,
                    "alert.on",
                    format!(
                        "unknown event {k:?}; expected one of {}",
                        crate::events::KINDS.join(", ")
                    ),
                );
            }
        }
        if let Some(w) = &a.webhook {
            if url::Url::parse(w)
                .map(|u| u.scheme() != "http" && u.scheme() != "https")
                .unwrap_or(true)
            {
                return cx.err(
                    None,
                    "alert.webhook",
                    format!("{w:?}: expected an http(s):// URL"),
                );
            }
        }
        if !(0.0..=1.0).contains(&a.threshold) {
            return cx.err(None, "alert.threshold", "must be between 0 and 1".into());
        }
    }
    Ok(())
}

/// `[[route]]` (reverse mode).
pub(super) fn routes(cx: &Ctx<'_>, file: &FileConfig, allow: &[IpNet]) -> Result<(), ConfigError> {
    for r in &file.route {
        let addr = match r.listen.get_ref().trim().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                return cx.at(
                    &r.listen,
                    "route.listen",
                    format!("{:?} is not IP:port", r.listen.get_ref()),
                )
            }
        };
        if !addr.ip().is_loopback() && allow.is_empty() {
            return cx.at(
                &r.listen,
                "route.listen",
                format!(
                    "{addr} is not loopback: set [auth] allow so the route is not open to everyone"
                ),
            );
        }
        if r.via != "direct" && r.via != "pool" {
            return cx.at(
                &r.listen,
                "route.via",
                format!("{:?}: expected \"direct\" or \"pool\"", r.via),
            );
        }
        if r.backend.is_empty() {
            return cx.at(
                &r.listen,
                "route.backend",
                "a route needs at least one [[route.backend]]".into(),
            );
        }
        for b in &r.backend {
            match url::Url::parse(b.url.get_ref()) {
                Ok(u)
                    if super::route_protocols::BackendProtocol::from_scheme(u.scheme())
                        .is_some()
                        && u.host_str().is_some() => {}
                _ => {
                    return cx.at(
                        &b.url,
                        "route.backend.url",
                        format!(
                            "{:?}: expected http://, https://, h2c:// or h2://host:port",
                            b.url.get_ref()
                        ),
                    )
                }
            }
        }
        if let Some(sg) = &r.sign {
            if sg.scheme != "apigw" {
                return cx.at(
                    &r.listen,
                    "route.sign.scheme",
                    format!("{:?}: only \"apigw\" signs on the fly", sg.scheme),
                );
            }
            if std::env::var(&sg.secret_env)
                .map(|v| v.is_empty())
                .unwrap_or(true)
            {
                return cx.at(
                    &r.listen,
                    "route.sign.secret_env",
                    format!("environment variable {} is not set", sg.secret_env),
                );
            }
        }
        if r.max_attempts == 0 {
            return cx.at(&r.listen, "route.max_attempts", "must be at least 1".into());
        }
        super::route_protocols::validate(cx, r)?;
    }
    Ok(())
}

/// An open listener without auth or allow-list would be an open proxy.
pub(super) fn no_open_proxy(
    cx: &Ctx<'_>,
    file: &FileConfig,
    listeners: &[Listener],
    admission: &AdmissionSettings,
) -> Result<(), ConfigError> {
    // Safety: an open listener without auth or allow-list is an open proxy.
    for (l, lc) in listeners.iter().zip(&file.listen) {
        if !l.addr.ip().is_loopback() && admission.users.is_empty() && admission.allow.is_empty() {
            return cx.at(&lc.addr, "listen.addr", format!(
                "{} is not a loopback address and no inbound auth or allow-list is set: this would be an open proxy. \
                 Add `[auth] users = [\"user:password\"]` and/or `[auth] allow = [\"10.0.0.0/8\"]`, or listen on 127.0.0.1",
                l.addr
            ));
        }
    }
    Ok(())
}
