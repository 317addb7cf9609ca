//! Stable cause codes (docs/doctor.md), each with a one-sentence why and a fix.

use crate::upstream::error::TlsKind;
use crate::upstream::{ConnectError, Phase};

/// A diagnosed root cause. The `code()` strings are a stable interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    ProxyDnsFailure,
    ProxyRefused,
    ProxyTimeout,
    ProxyUnreachable,
    ProxyReset,
    ProxyProtocolMismatch,
    ProxyAuthRequired,
    ProxyAuthRejected,
    ProxyForbidden,
    ProxyUpstreamError,
    TargetDnsFailure,
    TargetRefused,
    TargetTimeout,
    TlsProtocolMismatch,
    TlsCertUntrusted,
    TlsCertExpired,
    TlsHostnameMismatch,
    TlsIntercepted,
    HttpError,
    SignatureMismatch,
    TimestampExpired,
    IdleCut,
}

impl Cause {
    pub const ALL: [Cause; 22] = [
        Cause::ProxyDnsFailure,
        Cause::ProxyRefused,
        Cause::ProxyTimeout,
        Cause::ProxyUnreachable,
        Cause::ProxyReset,
        Cause::ProxyProtocolMismatch,
        Cause::ProxyAuthRequired,
        Cause::ProxyAuthRejected,
        Cause::ProxyForbidden,
        Cause::ProxyUpstreamError,
        Cause::TargetDnsFailure,
        Cause::TargetRefused,
        Cause::TargetTimeout,
        Cause::TlsProtocolMismatch,
        Cause::TlsCertUntrusted,
        Cause::TlsCertExpired,
        Cause::TlsHostnameMismatch,
        Cause::TlsIntercepted,
        Cause::HttpError,
        Cause::SignatureMismatch,
        Cause::TimestampExpired,
        Cause::IdleCut,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Cause::ProxyDnsFailure => "proxy_dns_failure",
            Cause::ProxyRefused => "proxy_refused",
            Cause::ProxyTimeout => "proxy_timeout",
            Cause::ProxyUnreachable => "proxy_unreachable",
            Cause::ProxyReset => "proxy_reset",
            Cause::ProxyProtocolMismatch => "proxy_protocol_mismatch",
            Cause::ProxyAuthRequired => "proxy_auth_required",
            Cause::ProxyAuthRejected => "proxy_auth_rejected",
            Cause::ProxyForbidden => "proxy_forbidden",
            Cause::ProxyUpstreamError => "proxy_upstream_error",
            Cause::TargetDnsFailure => "target_dns_failure",
            Cause::TargetRefused => "target_refused",
            Cause::TargetTimeout => "target_timeout",
            Cause::TlsProtocolMismatch => "tls_protocol_mismatch",
            Cause::TlsCertUntrusted => "tls_cert_untrusted",
            Cause::TlsCertExpired => "tls_cert_expired",
            Cause::TlsHostnameMismatch => "tls_hostname_mismatch",
            Cause::TlsIntercepted => "tls_intercepted",
            Cause::HttpError => "http_error",
            Cause::SignatureMismatch => "signature_mismatch",
            Cause::TimestampExpired => "timestamp_expired",
            Cause::IdleCut => "idle_cut",
        }
    }

    /// The fix, in one or two sentences.
    pub fn fix(self) -> &'static str {
        match self {
            Cause::ProxyDnsFailure => "Check the proxy host name for typos, or use its IP address; check which DNS server this machine uses.",
            Cause::ProxyRefused => "Nothing listens on the proxy port: start the proxy, or correct the port in the proxy URL.",
            Cause::ProxyTimeout => "Packets to the proxy are silently dropped: open the firewall / security group for this port, or check the proxy host is up.",
            Cause::ProxyUnreachable => "There is no route to the proxy: check the address, VPN and routing table.",
            Cause::ProxyReset => "The proxy closed the connection: check its logs, its client ACLs and connection limits.",
            Cause::ProxyProtocolMismatch => "The port speaks another protocol: use socks5:// for a SOCKS port and http:// for an HTTP proxy port.",
            Cause::ProxyAuthRequired => "Put credentials in the proxy URL (http://user:password@host:port, percent-encoded: @ → %40, : → %3A) or in the config.",
            Cause::ProxyAuthRejected => "The proxy rejected the credentials: check user name and password, and percent-encode special characters in the URL.",
            Cause::ProxyForbidden => "The proxy's ACL refuses this destination or port: ask for it to be allowed, or use another proxy.",
            Cause::ProxyUpstreamError => "The proxy could not reach the target: check the target from the proxy's network, or use another proxy.",
            Cause::TargetDnsFailure => "The target name does not resolve where it is resolved: check the name, the DNS server, or let the proxy resolve it (socks5h://).",
            Cause::TargetRefused => "Nothing listens on the target port: check the URL's port and that the service is up.",
            Cause::TargetTimeout => "The target does not answer: check firewalls / security groups in front of it, or whether it must be reached through a proxy.",
            Cause::TlsProtocolMismatch => "The server does not speak a TLS version or cipher we accept (TLS 1.2+), or is not TLS at all on this port.",
            Cause::TlsCertUntrusted => "The certificate's issuer is not trusted: install the issuing CA in the system trust store, or fix the server's chain.",
            Cause::TlsCertExpired => "The certificate is outside its validity period: renew it — or, if it looks valid, fix this machine's clock.",
            Cause::TlsHostnameMismatch => "The certificate is for another name: use the name it was issued for, or reissue it with this name.",
            Cause::TlsIntercepted => "A TLS-inspecting proxy replaced the certificate: install its CA in the trust store, or exempt this host from inspection.",
            Cause::HttpError => "The request reached the server, which answered with an error status: see the response.",
            Cause::SignatureMismatch => "The API Gateway computed another signature: compare StringToSign with `proxyguard sign --explain` (Accept, Content-Type, signed headers, parameter order) and check the AppSecret.",
            Cause::TimestampExpired => "X-Ca-Timestamp is outside the gateway's 15-minute window: fix this machine's clock (NTP).",
            Cause::IdleCut => "Something on the path (SLB, NAT gateway, proxy) cuts connections idle longer than the cut: in Go set http.Transport.IdleConnTimeout and net.Dialer.KeepAlive below it, or run the app through `proxyguard serve` with `[pool] upstream_idle` below it (idle keep-alive connections to the upstream are retired before the cut, TCP keep-alive probes keep NAT and SLB entries alive, and a request that meets a cut connection is retried on a new one).",
        }
    }
}

/// Maps a connection failure to a cause. `via_proxy`: a proxy was in the path.
pub fn from_connect_error(err: &ConnectError, via_proxy: bool) -> Cause {
    match err {
        ConnectError::Dns { proxy: true, .. } => Cause::ProxyDnsFailure,
        ConnectError::Dns { .. } => Cause::TargetDnsFailure,
        ConnectError::Refused { proxy: true, .. } => Cause::ProxyRefused,
        ConnectError::Refused { .. } => Cause::TargetRefused,
        ConnectError::Timeout { proxy: true, .. } => Cause::ProxyTimeout,
        ConnectError::Timeout { .. } => Cause::TargetTimeout,
        ConnectError::Unreachable { proxy: true, .. } => Cause::ProxyUnreachable,
        ConnectError::Unreachable { .. } => Cause::TargetTimeout,
        ConnectError::Reset { phase, proxy } => {
            if *proxy || (via_proxy && *phase != Phase::Tls) {
                Cause::ProxyReset
            } else if *phase == Phase::Tls {
                Cause::TlsProtocolMismatch
            } else {
                Cause::TargetRefused
            }
        }
        ConnectError::Io { proxy: true, .. } => Cause::ProxyReset,
        ConnectError::Io { .. } => Cause::TargetRefused,
        ConnectError::ProxyAuthRequired { .. } => Cause::ProxyAuthRequired,
        ConnectError::ProxyAuthRejected { .. } => Cause::ProxyAuthRejected,
        ConnectError::ProxyForbidden { .. } => Cause::ProxyForbidden,
        ConnectError::ProxyStatus { .. } | ConnectError::TargetFailed { .. } => {
            Cause::ProxyUpstreamError
        }
        ConnectError::SocksReply { code } => match code {
            0x02 => Cause::ProxyForbidden,
            0x04 => Cause::TargetDnsFailure,
            0x05 => Cause::TargetRefused,
            0x06 => Cause::TargetTimeout,
            _ => Cause::ProxyUpstreamError,
        },
        ConnectError::ProxyProtocol { .. } => Cause::ProxyProtocolMismatch,
        ConnectError::Tls { kind, .. } => match kind {
            TlsKind::Protocol | TlsKind::Other => Cause::TlsProtocolMismatch,
            TlsKind::UnknownIssuer => Cause::TlsCertUntrusted,
            TlsKind::Expired | TlsKind::NotYetValid => Cause::TlsCertExpired,
            TlsKind::HostnameMismatch => Cause::TlsHostnameMismatch,
        },
        ConnectError::NoRoute(_) | ConnectError::Prohibited(_) => Cause::ProxyUpstreamError,
    }
}

/// Issuer names of common TLS-inspecting products.
const INSPECTORS: &[&str] = &[
    "zscaler",
    "fortinet",
    "fortigate",
    "palo alto",
    "blue coat",
    "bluecoat",
    "symantec web",
    "sophos",
    "netskope",
    "forcepoint",
    "websense",
    "check point",
    "checkpoint",
    "cisco umbrella",
    "mcafee web gateway",
    "skyhigh",
    "kaspersky",
    "eset ssl filter",
    "avast",
    "avg",
    "bitdefender",
    "mitmproxy",
    "charles proxy",
    "fiddler",
    "burp",
    "squid",
    "untangle",
    "barracuda",
    "watchguard",
    "sonicwall",
    "cloudflare gateway",
    "menlo",
    "iboss",
    "lightspeed",
    "securly",
    "contentkeeper",
];

/// True when an issuer name looks like a TLS-inspecting proxy.
pub fn looks_intercepted(issuer: &str) -> bool {
    let i = issuer.to_ascii_lowercase();
    INSPECTORS.iter().any(|n| i.contains(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for c in Cause::ALL {
            assert!(seen.insert(c.code()));
            assert!(c
                .code()
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch == '_'));
            assert!(!c.fix().is_empty());
        }
        assert!(looks_intercepted("CN=Zscaler Intermediate Root CA"));
        assert!(!looks_intercepted("CN=R3, O=Let's Encrypt"));
    }
}
