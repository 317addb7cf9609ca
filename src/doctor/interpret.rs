//! Maps raw results of the steps (connector errors, proxy replies, TLS
//! errors, probe findings) to a cause with a sentence a person can act on.

use std::net::SocketAddr;

use super::probe::Spoken;
use super::tlsinfo::CertSummary;
use super::walk::Failure;
use super::{Cause, Plan};
use crate::upstream::{http_connect, ConnectError, Scheme, UpstreamSpec};

pub(super) fn tcp_explain(e: &ConnectError) -> String {
    match e {
        ConnectError::Refused { addr, .. } => format!("connection to {addr} refused (nothing listens there, or a firewall rejects)"),
        ConnectError::Timeout { after, .. } => format!("no answer within {} ms: packets are silently dropped (firewall / security group) or the host is down", after.as_millis()),
        ConnectError::Unreachable { addr, detail, .. } => format!("{addr} unreachable: {detail} (no route)"),
        ConnectError::Reset { .. } => "connection reset".into(),
        other => other.to_string(),
    }
}

/// A proxy that speaks another protocol than the URL's scheme says.
pub(super) fn protocol_mismatch(
    p: &UpstreamSpec,
    s: &Spoken,
    addr: Option<SocketAddr>,
) -> Option<Failure> {
    let hostport = addr
        .map(|a| a.to_string())
        .unwrap_or_else(|| format!("{}:{}", p.host, p.port));
    let used = p.scheme.as_str();
    let (speaks, scheme) = match p.scheme {
        Scheme::Socks5 | Scheme::Socks5h if s.socks5 => return None,
        Scheme::Https if s.tls => return None,
        Scheme::Http if s.http.is_some() && !s.http_to_tls => return None,
        _ if s.socks5 => ("SOCKS5", "socks5h"),
        _ if s.tls && !s.speaks_http() => ("TLS", "https"),
        _ if s.speaks_http() => ("HTTP", "http"),
        _ => return None,
    };
    let summary = format!(
        "The proxy URL says {used}:// but {hostport} {}: this port speaks {speaks}: use {scheme}://.",
        s.describe()
    );
    Some(
        Failure::new(Cause::ProxyProtocolMismatch, summary).with_fix(format!(
            "Use {scheme}://{hostport} as the proxy URL (the port speaks {speaks}, not {used})."
        )),
    )
}

/// A CONNECT reply other than 2xx.
pub(super) fn connect_reply(
    e: &ConnectError,
    head: &http_connect::ReplyHead,
    had_credentials: bool,
) -> Failure {
    if head.status == 401 {
        // Some proxies (tinyproxy's BasicAuth) answer 401 + WWW-Authenticate
        // instead of 407: still the proxy asking for credentials.
        let scheme = head
            .header("www-authenticate")
            .or_else(|| head.header("proxy-authenticate"))
            .unwrap_or("unknown")
            .to_string();
        let e = if had_credentials {
            ConnectError::ProxyAuthRejected { scheme }
        } else {
            ConnectError::ProxyAuthRequired { scheme }
        };
        return auth_failure(&e, 401, head);
    }
    if let Some(v) = head.header("x-squid-error") {
        if v.contains("ERR_DNS_FAIL") {
            return Failure::new(Cause::TargetDnsFailure, handshake_summary(e, head));
        }
        if v.contains("ERR_CONNECT_FAIL") && v.contains("111") {
            return Failure::new(Cause::TargetRefused, handshake_summary(e, head));
        }
    }
    Failure::new(
        super::cause::from_connect_error(e, true),
        handshake_summary(e, head),
    )
}

/// 401/407 from the proxy.
pub(super) fn auth_failure(
    e: &ConnectError,
    status: u16,
    head: &http_connect::ReplyHead,
) -> Failure {
    let (ConnectError::ProxyAuthRequired { scheme } | ConnectError::ProxyAuthRejected { scheme }) =
        e
    else {
        return Failure::new(
            super::cause::from_connect_error(e, true),
            handshake_summary(e, head),
        );
    };
    let lower = scheme.to_ascii_lowercase();
    let windows = if lower.starts_with("ntlm") || lower.starts_with("negotiate") {
        " NTLM/Negotiate means Windows domain authentication: Go and most tools cannot answer it; use Basic credentials the proxy accepts, or a local helper such as cntlm."
    } else {
        ""
    };
    let rejected = matches!(e, ConnectError::ProxyAuthRejected { .. });
    let what = if rejected {
        "rejected the credentials"
    } else {
        "requires authentication and none was sent"
    };
    let header = if status == 401 {
        "WWW-Authenticate"
    } else {
        "Proxy-Authenticate"
    };
    let c = if rejected {
        Cause::ProxyAuthRejected
    } else {
        Cause::ProxyAuthRequired
    };
    Failure::new(
        c,
        format!("The proxy {what} ({status}, {header}: {scheme}).{windows}"),
    )
}

fn handshake_summary(e: &ConnectError, head: &http_connect::ReplyHead) -> String {
    match e {
        ConnectError::ProxyAuthRequired { .. } | ConnectError::ProxyAuthRejected { .. } => {
            auth_failure(e, head.status, head).summary
        }
        ConnectError::ProxyForbidden { .. } => "The proxy refused the CONNECT by policy (403): its ACL does not allow this destination or port.".into(),
        ConnectError::ProxyStatus { status, reason }
        | ConnectError::TargetFailed { status, reason, .. } => format!("The proxy answered {status} {reason}: it could not reach the target."),
        other => format!("The proxy handshake failed: {other}."),
    }
}

/// A failed TLS handshake with the target, in words.
pub(super) fn tls_error(
    e: &std::io::Error,
    plan: &Plan,
    via_proxy: bool,
    cert: Option<&CertSummary>,
    plaintext_answer: bool,
) -> Failure {
    use rustls::CertificateError as CE;
    let host = &plan.target.host;
    let port = plan.target.port;
    if plaintext_answer {
        return Failure::new(
            Cause::TlsProtocolMismatch,
            format!("{host}:{port} answered our TLS ClientHello with plain HTTP: this port speaks HTTP, not HTTPS."),
        )
        .with_fix(format!("Use http://{host}:{port}/ (this port speaks plain HTTP), or the server's TLS port."));
    }
    let issuer = cert.map(|c| c.issuer.clone()).unwrap_or_default();
    let rustls_err = e.get_ref().and_then(|x| x.downcast_ref::<rustls::Error>());
    let untrusted = |why: String| Failure::new(Cause::TlsCertUntrusted, why);
    match rustls_err {
        Some(rustls::Error::InvalidCertificate(ce)) => match ce {
            CE::Expired | CE::ExpiredContext { .. } | CE::NotValidYet | CE::NotValidYetContext { .. } => {
                let skew = cert
                    .map(|c| {
                        if c.valid_in_s > 0 {
                            format!(" It becomes valid in {} s: is this machine's clock behind?", c.valid_in_s)
                        } else if c.expires_in_s < 0 && c.expires_in_s > -86_400 * 2 {
                            format!(" It expired {} s ago: check it was renewed, or this machine's clock.", -c.expires_in_s)
                        } else {
                            String::new()
                        }
                    })
                    .unwrap_or_default();
                Failure::new(Cause::TlsCertExpired, format!("The certificate of {host} is outside its validity period.{skew}"))
            }
            CE::NotValidForName | CE::NotValidForNameContext { .. } => Failure::new(
                Cause::TlsHostnameMismatch,
                format!("The certificate is not valid for {host} (it names {:?}).", cert.map(|c| c.sans.clone()).unwrap_or_default()),
            ),
            CE::UnknownIssuer => {
                if super::cause::looks_intercepted(&issuer) {
                    Failure::new(Cause::TlsIntercepted, format!("The certificate for {host} was issued by {issuer:?}, a TLS-inspecting proxy, which this machine does not trust."))
                } else if cert.is_some_and(|c| c.self_signed) {
                    untrusted(format!("The certificate of {host} is self-signed ({issuer:?}): no trusted issuer vouches for it."))
                } else {
                    untrusted(format!("The certificate of {host} is signed by an unknown issuer {issuer:?}."))
                }
            }
            CE::BadSignature => untrusted(format!("The signature on the certificate of {host} does not verify with its issuer's key (a broken or forged chain).")),
            CE::BadEncoding => untrusted(format!("The certificate of {host} cannot be parsed.")),
            CE::Revoked => untrusted(format!("The certificate of {host} has been revoked by its issuer.")),
            CE::InvalidPurpose => untrusted(format!("The certificate of {host} is not for TLS server authentication (extended key usage).")),
            CE::Other(o) => other_cert_error(&o.to_string(), host, cert, &issuer),
            _ => untrusted(format!("The certificate of {host} was rejected ({issuer:?}).")),
        },
        Some(rustls::Error::AlertReceived(alert)) => {
            let name = alert.as_str().unwrap_or("unknown");
            Failure::new(
                Cause::TlsProtocolMismatch,
                format!("{host}:{port} refused our TLS handshake with the alert {name}: it accepts no TLS version or cipher we offer (TLS 1.2+), or wants a client certificate."),
            )
        }
        Some(rustls::Error::InvalidMessage(_)) | Some(rustls::Error::InappropriateMessage { .. }) | Some(rustls::Error::InappropriateHandshakeMessage { .. }) => Failure::new(
            Cause::TlsProtocolMismatch,
            format!("{host}:{port} answered our TLS ClientHello with something that is not TLS: this port is not HTTPS."),
        ),
        Some(rustls::Error::PeerIncompatible(_)) => Failure::new(
            Cause::TlsProtocolMismatch,
            format!("{host}:{port} speaks TLS, but no version or cipher we accept (TLS 1.2+ with modern ciphers)."),
        ),
        Some(rustls::Error::PeerMisbehaved(_)) => Failure::new(
            Cause::TlsProtocolMismatch,
            format!("{host}:{port} broke the TLS protocol during the handshake (a buggy server or a middlebox rewriting traffic)."),
        ),
        Some(rustls::Error::NoCertificatesPresented) => untrusted(format!("{host}:{port} presented no certificate.")),
        _ => {
            use std::io::ErrorKind as K;
            let closed = matches!(e.kind(), K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe);
            if closed && via_proxy {
                Failure::new(Cause::TlsProtocolMismatch, format!("The connection to {host}:{port} closed during the TLS handshake: the target does not speak TLS on this port, or rejected our ClientHello."))
            } else if closed {
                Failure::new(Cause::TlsProtocolMismatch, format!("{host}:{port} closed the connection on our TLS ClientHello: it does not speak TLS on this port, or rejected our versions/ciphers."))
            } else {
                Failure::new(Cause::TlsProtocolMismatch, format!("The TLS handshake with {host}:{port} failed: {e}."))
            }
        }
    }
}

/// webpki/platform errors that come as `CertificateError::Other`.
fn other_cert_error(
    text: &str,
    host: &crate::upstream::Host,
    cert: Option<&CertSummary>,
    issuer: &str,
) -> Failure {
    let t = text.to_ascii_lowercase().replace(['_', ' '], "");
    let why = if t.contains("causedasendentity") || cert.is_some_and(|c| c.is_ca && c.self_signed) {
        format!("{host} presents a CA certificate (basicConstraints CA:TRUE, as `openssl req -x509` makes by default) as its own server certificate. Nothing this machine trusts issued it; and clients built on webpki (rustls, so proxyguard) refuse a CA certificate as a server certificate even when it is trusted, while curl (OpenSSL) accepts it with --cacert.")
    } else if t.contains("unknown") || t.contains("issuer") || t.contains("trust") {
        format!("The certificate of {host} is signed by an unknown issuer {issuer:?}.")
    } else if t.contains("expired") {
        return Failure::new(
            Cause::TlsCertExpired,
            format!("The certificate of {host} is outside its validity period."),
        );
    } else {
        format!("The certificate of {host} was rejected by the verifier: {text}.")
    };
    let fix = if t.contains("causedasendentity") || cert.is_some_and(|c| c.is_ca && c.self_signed) {
        Some("Issue the server a leaf certificate (CA:FALSE, with the host name in subjectAltName) from a CA, and trust that CA (--cacert FILE for a test, the system trust store for real use).")
    } else {
        None
    };
    let f = Failure::new(Cause::TlsCertUntrusted, why);
    match fix {
        Some(x) => f.with_fix(x),
        None => f,
    }
}

/// A failed TLS handshake with an https:// proxy itself, in words.
pub(super) fn proxy_tls(e: &ConnectError, c: Cause) -> Failure {
    use crate::upstream::error::TlsKind;
    let ConnectError::Tls { kind, server, .. } = e else {
        return Failure::new(c, format!("The TLS handshake with the proxy failed: {e}."));
    };
    let trust = "Install the proxy's CA in the system trust store (serve and doctor use the platform roots); for doctor alone, --proxy-cacert FILE adds it.";
    match kind {
        TlsKind::UnknownIssuer => Failure::new(
            c,
            format!("The https:// proxy {server} presents a certificate no trusted CA issued."),
        )
        .with_fix(trust),
        TlsKind::Expired | TlsKind::NotYetValid => Failure::new(
            c,
            format!("The https:// proxy {server} presents a certificate outside its validity period."),
        ),
        TlsKind::HostnameMismatch => Failure::new(
            c,
            format!("The https:// proxy's certificate is not valid for the name {server} used in the proxy URL."),
        ),
        TlsKind::Protocol | TlsKind::Other => Failure::new(
            c,
            format!("The TLS handshake with the https:// proxy {server} failed: it accepts no TLS version or cipher we offer, or is not TLS."),
        ),
    }
}
