//! Protocol settings of reverse routes: gRPC awareness (`[[route]] grpc`),
//! backend health over the gRPC health service (`[[route.backend]] check`)
//! and the HTTP/2 → HTTP/1.1 fallback (`[route.fallback] protocol`), with
//! their validation against the backends' URL schemes.

use serde::{Deserialize, Serialize};

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

/// Checks one route's protocol settings (the URLs already parsed).
pub(super) fn validate(cx: &Ctx<'_>, r: &RouteConfig) -> Result<(), ConfigError> {
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
}
