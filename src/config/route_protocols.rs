//! Protocol settings of reverse routes: gRPC awareness (`[[route]] grpc`),
//! TLS on the route listener (`[[route]] cert`/`key`, ALPN h2 + http/1.1),
//! backend health over the gRPC health service (`[[route.backend]] check`)
//! and the HTTP/2 → HTTP/1.1 fallback (`[route.fallback] protocol`), with
//! their validation against the backends' URL schemes.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::tls_acceptor::{load_server_config, TlsFiles};

/// ALPN a TLS route listener offers.
pub const ALPN_H2_HTTP11: &[&[u8]] = &[b"h2", b"http/1.1"];

use super::load::{ConfigError, Ctx};
use super::schema::RouteConfig;

/// How the active health check probes a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendCheck {
    /// A TCP (and TLS for `https://`/`h2://`) connection.
    #[default]
    Connect,
    /// `grpc.health.v1.Health/Check`; SERVING is healthy.
    Grpc,
}

/// The protocol a route falls back to when a backend cannot speak HTTP/2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FallbackProtocol {
    #[serde(rename = "http1")]
    Http1,
}

/// How a backend URL asks to be spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendProtocol {
    /// `http://`: HTTP/1.1 over TCP.
    Http1,
    /// `h2c://`: HTTP/2 over TCP with prior knowledge.
    H2c,
    /// `h2://`: HTTP/2 over TLS (ALPN `h2`).
    H2,
    /// `https://`: TLS, HTTP/2 if ALPN picks `h2`, else HTTP/1.1.
    Https,
}

impl BackendProtocol {
    /// From a backend URL's scheme; None for anything else.
    pub fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "http" => Some(BackendProtocol::Http1),
            "h2c" => Some(BackendProtocol::H2c),
            "h2" => Some(BackendProtocol::H2),
            "https" => Some(BackendProtocol::Https),
            _ => None,
        }
    }

    /// The transport scheme underneath (`http` or `https`).
    pub fn transport_scheme(self) -> &'static str {
        match self {
            BackendProtocol::Http1 | BackendProtocol::H2c => "http",
            BackendProtocol::H2 | BackendProtocol::Https => "https",
        }
    }

    /// TLS to the backend.
    pub fn tls(self) -> bool {
        self.transport_scheme() == "https"
    }

    /// May carry HTTP/2 (what gRPC needs).
    pub fn may_speak_h2(self) -> bool {
        self != BackendProtocol::Http1
    }
}

/// A relative path is taken from the config file's directory.
fn resolve(config_path: Option<&Path>, p: &str) -> PathBuf {
    let p = Path::new(p.trim());
    match config_path.and_then(Path::parent) {
        Some(dir) if !p.is_absolute() && dir.is_dir() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// The route listener's TLS files (None: plaintext). `config_path` is the
/// config file, for relative paths.
pub fn tls_files(r: &RouteConfig, config_path: Option<&Path>) -> Option<TlsFiles> {
    match (&r.cert, &r.key) {
        (Some(c), Some(k)) => Some(TlsFiles {
            cert: resolve(config_path, c.get_ref()),
            key: resolve(config_path, k.get_ref()),
        }),
        _ => None,
    }
}

fn validate_tls(cx: &Ctx<'_>, r: &RouteConfig) -> Result<(), ConfigError> {
    match (&r.cert, &r.key) {
        (None, None) => return Ok(()),
        (Some(c), None) => {
            return cx.at(
                c,
                "route.key",
                "`cert` is set but `key` is not: give both".into(),
            )
        }
        (None, Some(k)) => {
            return cx.at(
                k,
                "route.cert",
                "`key` is set but `cert` is not: give both".into(),
            )
        }
        (Some(_), Some(_)) => {}
    }
    let Some(files) = tls_files(r, Some(Path::new(cx.source()))) else {
        return Ok(());
    };
    if let Err(e) = load_server_config(&files, ALPN_H2_HTTP11) {
        let (at, field) = match (e.is_key_problem(), &r.key, &r.cert) {
            (true, Some(k), _) => (k, "route.key"),
            (_, _, Some(c)) => (c, "route.cert"),
            _ => (&r.listen, "route.cert"),
        };
        return cx.at(at, field, e.to_string());
    }
    Ok(())
}

/// Checks one route's protocol settings (the URLs already parsed).
pub(super) fn validate(cx: &Ctx<'_>, r: &RouteConfig) -> Result<(), ConfigError> {
    validate_tls(cx, r)?;
    for b in &r.backend {
        let Some(proto) = url::Url::parse(b.url.get_ref())
            .ok()
            .and_then(|u| BackendProtocol::from_scheme(u.scheme()))
        else {
            continue;
        };
        if proto.may_speak_h2() {
            continue;
        }
        if b.check == Some(BackendCheck::Grpc) {
            return cx.at(
                &b.url,
                "route.backend.check",
                "\"grpc\" health checks need an HTTP/2 backend: h2c://, h2:// or https://".into(),
            );
        }
        if r.grpc {
            return cx.at(
                &b.url,
                "route.backend.url",
                "a grpc = true route needs HTTP/2 backends: h2c://, h2:// or https://".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn route(extra: &str, url: &str, backend_extra: &str) -> String {
        format!(
            "[[route]]\nlisten = \"127.0.0.1:1\"\n{extra}\n[[route.backend]]\nurl = \"{url}\"\n{backend_extra}\n"
        )
    }

    #[test]
    fn h2_schemes_and_keys_load() {
        let text = route(
            "grpc = true\n[route.fallback]\nprotocol = \"http1\"\n",
            "h2c://127.0.0.1:2",
            "check = \"grpc\"",
        );
        Config::from_toml(&text, "f").expect("loads");
        Config::from_toml(&route("", "h2://a.test:443", ""), "f").expect("h2://");
    }

    #[test]
    fn grpc_needs_http2_backends() {
        let e =
            Config::from_toml(&route("grpc = true", "http://127.0.0.1:2", ""), "f").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("route.backend.url"), "{e}");
        let e = Config::from_toml(&route("", "http://127.0.0.1:2", "check = \"grpc\""), "f")
            .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("route.backend.check"), "{e}");
    }

    #[test]
    fn unknown_values_are_refused() {
        let bad_proto = route(
            "[route.fallback]\nprotocol = \"spdy\"\n",
            "h2c://127.0.0.1:2",
            "",
        );
        let e = Config::from_toml(&bad_proto, "f").unwrap_err();
        assert!(e.to_string().contains("spdy"), "{e}");
        let bad_check = route("", "h2c://127.0.0.1:2", "check = \"ping\"");
        assert!(Config::from_toml(&bad_check, "f").is_err());
        let bad_scheme = route("", "ws://127.0.0.1:2", "");
        assert!(Config::from_toml(&bad_scheme, "f").is_err());
    }

    #[test]
    fn tls_needs_both_files_and_readable_ones() {
        let e = Config::from_toml(
            &route("cert = \"/nonexistent/c.pem\"", "http://127.0.0.1:2", ""),
            "f",
        )
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("route.key"), "{e}");
        let both = "cert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"";
        let e = Config::from_toml(&route(both, "http://127.0.0.1:2", ""), "f").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("route.cert"), "{e}");
        assert!(e.to_string().contains("/nonexistent/c.pem"), "{e}");
    }
}
