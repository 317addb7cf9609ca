//! One classification of connection failures, shared by serve (502 text and
//! SOCKS reply codes), passive health (what counts against an upstream) and
//! doctor (cause codes). Classify once, at the place the failure happens.

use std::fmt;
use std::time::Duration;

/// The phase of establishing a connection, named like curl's `-w` timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Resolving a host name (proxy host, or target when going direct).
    Dns,
    /// TCP connect (to the proxy, or to the target when direct).
    Tcp,
    /// TLS handshake with an `https://` proxy itself.
    ProxyTls,
    /// CONNECT request / SOCKS5 negotiation with the proxy.
    ProxyHandshake,
    /// TLS handshake with the target, through the tunnel.
    Tls,
    /// Waiting for the first byte of the response.
    FirstByte,
    /// The attempt as a whole: `[pool] connect_deadline` ran out before the
    /// phase it was in timed out on its own.
    Connect,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Dns => "dns",
            Phase::Tcp => "tcp",
            Phase::ProxyTls => "proxy_tls",
            Phase::ProxyHandshake => "proxy_handshake",
            Phase::Tls => "tls",
            Phase::FirstByte => "first_byte",
            Phase::Connect => "connect",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whose fault a failure is: decides whether passive health counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultClass {
    /// The upstream proxy is dead, unreachable or misbehaving.
    Upstream,
    /// The upstream rejected us for credentials (407) — a configuration fault.
    Auth,
    /// The upstream refused by policy (403, SOCKS "not allowed").
    Policy,
    /// The target itself failed (reported by a working proxy, or going direct).
    Target,
    /// Our own limits or the client's deadline.
    Local,
}

/// What went wrong between a working proxy and the target, as far as the
/// proxy's answer tells (squid's `X-Squid-Error`, the status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetFault {
    Refused,
    Dns,
    Timeout,
    Unreachable,
}

impl TargetFault {
    /// RFC 9209 `Proxy-Status` error type.
    pub fn proxy_status_error(self) -> &'static str {
        match self {
            TargetFault::Refused => "connection_refused",
            TargetFault::Dns => "dns_error",
            TargetFault::Timeout => "connection_timeout",
            TargetFault::Unreachable => "destination_unavailable",
        }
    }

    /// Reads a proxy's error answer: `X-Squid-Error` names the failure
    /// (with the errno for connect failures); otherwise the status decides.
    pub fn from_reply(status: u16, squid_error: Option<&str>) -> TargetFault {
        let mut words = squid_error.unwrap_or("").split_whitespace();
        match (words.next(), words.next()) {
            (Some("ERR_DNS_FAIL"), _) => TargetFault::Dns,
            (Some("ERR_CONNECT_FAIL"), Some("111")) => TargetFault::Refused,
            (Some("ERR_CONNECT_FAIL"), Some("110")) => TargetFault::Timeout,
            (Some("ERR_READ_TIMEOUT" | "ERR_LIFETIME_EXP"), _) => TargetFault::Timeout,
            _ if status == 504 => TargetFault::Timeout,
            _ => TargetFault::Unreachable,
        }
    }
}

/// TLS failure kinds worth telling apart for a human.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsKind {
    Protocol,
    UnknownIssuer,
    Expired,
    NotYetValid,
    HostnameMismatch,
    Other,
}

/// What a timeout in `phase` most often means, when that is not obvious.
fn timeout_hint(phase: Phase) -> &'static str {
    match phase {
        // A plain-HTTP proxy waits for a request line that a ClientHello
        // never completes: it says nothing until its own timeout.
        Phase::ProxyTls => {
            " (no TLS answer from the proxy: if the port speaks plain HTTP, use http://; `proxyguard doctor --proxy URL` checks)"
        }
        Phase::Connect => " ([pool] connect_deadline)",
        _ => "",
    }
}

/// Why a connection through an upstream (or direct) could not be made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    #[error("DNS lookup of {host} failed: {detail}")]
    Dns {
        host: String,
        detail: String,
        /// True when the name that failed is the proxy's own host.
        proxy: bool,
    },
    #[error("connection to {addr} refused")]
    Refused { addr: String, proxy: bool },
    #[error("{phase} timed out after {}ms{}", after.as_millis(), timeout_hint(*phase))]
    Timeout {
        phase: Phase,
        after: Duration,
        proxy: bool,
    },
    #[error("{addr} unreachable: {detail}")]
    Unreachable {
        addr: String,
        detail: String,
        proxy: bool,
    },
    #[error("connection reset during {phase}")]
    Reset { phase: Phase, proxy: bool },
    #[error("i/o error during {phase}: {detail}")]
    Io {
        phase: Phase,
        detail: String,
        proxy: bool,
    },
    #[error("proxy requires authentication ({scheme})")]
    ProxyAuthRequired { scheme: String },
    #[error("proxy rejected our credentials ({scheme})")]
    ProxyAuthRejected { scheme: String },
    #[error("proxy refused the request by policy (status {status})")]
    ProxyForbidden { status: u16 },
    #[error("proxy answered {status} {reason}")]
    ProxyStatus { status: u16, reason: String },
    /// A working proxy could not reach the target (CONNECT answered
    /// 500/502/503/504). Whether that is the target's fault or the proxy's is
    /// decided by asking another upstream (see `pool::attempt`).
    #[error("proxy answered {status} {reason}: the target could not be reached through it")]
    TargetFailed {
        status: u16,
        reason: String,
        kind: TargetFault,
        /// The upstream that reported it (set by the attempt engine).
        next_hop: Option<String>,
    },
    #[error("SOCKS5 proxy replied {code:#04x} ({})", socks_reply_text(*code))]
    SocksReply { code: u8 },
    #[error("proxy protocol error: {detail}")]
    ProxyProtocol { detail: String },
    #[error("TLS handshake with {server} failed: {detail}")]
    Tls {
        kind: TlsKind,
        server: String,
        detail: String,
        proxy: bool,
    },
    #[error("no route: {0}")]
    NoRoute(String),
    /// Refused by our own `[acl]`: never an upstream's fault.
    #[error("{0}")]
    Prohibited(crate::acl::Denied),
}

/// RFC 1928 reply texts.
pub fn socks_reply_text(code: u8) -> &'static str {
    match code {
        0x00 => "succeeded",
        0x01 => "general SOCKS server failure",
        0x02 => "connection not allowed by ruleset",
        0x03 => "network unreachable",
        0x04 => "host unreachable",
        0x05 => "connection refused",
        0x06 => "TTL expired",
        0x07 => "command not supported",
        0x08 => "address type not supported",
        _ => "unassigned",
    }
}

impl ConnectError {
    /// Maps an I/O error seen in `phase` to a classified error.
    pub fn from_io(err: &std::io::Error, phase: Phase, addr: &str, proxy: bool) -> Self {
        use std::io::ErrorKind as K;
        match err.kind() {
            K::ConnectionRefused => ConnectError::Refused {
                addr: addr.to_string(),
                proxy,
            },
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                ConnectError::Reset { phase, proxy }
            }
            K::UnexpectedEof => ConnectError::Reset { phase, proxy },
            K::TimedOut => ConnectError::Timeout {
                phase,
                after: Duration::ZERO,
                proxy,
            },
            K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => {
                ConnectError::Unreachable {
                    addr: addr.to_string(),
                    detail: err.to_string(),
                    proxy,
                }
            }
            _ => ConnectError::Io {
                phase,
                detail: err.to_string(),
                proxy,
            },
        }
    }

    /// Whose fault this is, for passive health accounting.
    pub fn fault(&self) -> FaultClass {
        match self {
            ConnectError::Dns { proxy, .. }
            | ConnectError::Refused { proxy, .. }
            | ConnectError::Timeout { proxy, .. }
            | ConnectError::Unreachable { proxy, .. }
            | ConnectError::Reset { proxy, .. }
            | ConnectError::Io { proxy, .. }
            | ConnectError::Tls { proxy, .. } => {
                if *proxy {
                    FaultClass::Upstream
                } else {
                    FaultClass::Target
                }
            }
            ConnectError::ProxyAuthRequired { .. } | ConnectError::ProxyAuthRejected { .. } => {
                FaultClass::Auth
            }
            ConnectError::ProxyForbidden { .. } => FaultClass::Policy,
            ConnectError::SocksReply { code: 0x02 } => FaultClass::Policy,
            // The proxy worked and reports that the target failed.
            ConnectError::TargetFailed { .. } => FaultClass::Target,
            ConnectError::SocksReply { code: 0x03..=0x06 } => FaultClass::Target,
            // Anything else the proxy answered is its own failure.
            ConnectError::ProxyStatus { .. }
            | ConnectError::SocksReply { .. }
            | ConnectError::ProxyProtocol { .. } => FaultClass::Upstream,
            ConnectError::NoRoute(_) | ConnectError::Prohibited(_) => FaultClass::Local,
        }
    }

    /// True when a working proxy reported that it could not (or would not)
    /// reach this target: the target may be dead, or the proxy may be wrong.
    /// Only another upstream reaching the same target tells which.
    pub fn needs_second_opinion(&self) -> bool {
        match self {
            ConnectError::TargetFailed { .. }
            | ConnectError::ProxyForbidden { .. }
            | ConnectError::SocksReply { .. } => {
                matches!(self.fault(), FaultClass::Target | FaultClass::Policy)
            }
            _ => false,
        }
    }

    /// The same failure as the upstream's own fault, once another upstream
    /// reached the target this one reported as failed.
    pub fn confirmed_upstream_fault(&self) -> ConnectError {
        match self {
            ConnectError::TargetFailed { status, reason, .. } => ConnectError::ProxyStatus {
                status: *status,
                reason: format!("{reason} (another upstream reached the target)"),
            },
            ConnectError::SocksReply { code } if self.fault() == FaultClass::Target => {
                ConnectError::ProxyStatus {
                    status: 502,
                    reason: format!(
                        "SOCKS5 reply {code:#04x} ({}) while another upstream reached the target",
                        socks_reply_text(*code)
                    ),
                }
            }
            other => other.clone(),
        }
    }

    /// RFC 9209 `Proxy-Status` error type.
    pub fn proxy_status_error(&self) -> &'static str {
        match self {
            ConnectError::Dns { .. } => "dns_error",
            ConnectError::Refused { .. } => "connection_refused",
            ConnectError::Timeout { .. } => "connection_timeout",
            ConnectError::Unreachable { .. } => "destination_unavailable",
            ConnectError::Reset { .. } => "connection_terminated",
            ConnectError::Io { .. } => "proxy_internal_error",
            ConnectError::ProxyAuthRequired { .. } | ConnectError::ProxyAuthRejected { .. } => {
                "proxy_auth_required"
            }
            ConnectError::ProxyForbidden { .. } => "connection_refused",
            ConnectError::ProxyStatus { .. } => "proxy_next_hop_error",
            ConnectError::TargetFailed { kind, .. } => kind.proxy_status_error(),
            ConnectError::SocksReply { code } => match code {
                0x05 => "connection_refused",
                0x03 | 0x04 => "destination_unavailable",
                0x06 => "connection_timeout",
                0x02 => "connection_refused",
                _ => "proxy_next_hop_error",
            },
            ConnectError::ProxyProtocol { .. } => "http_protocol_error",
            ConnectError::Tls { .. } => "tls_protocol_error",
            ConnectError::NoRoute(_) => "destination_unavailable",
            ConnectError::Prohibited(_) => "destination_ip_prohibited",
        }
    }

    /// HTTP status for a client of the HTTP listener.
    pub fn http_status(&self) -> u16 {
        match self {
            ConnectError::Timeout { .. } => 504,
            ConnectError::SocksReply { code: 0x06 } => 504,
            ConnectError::ProxyStatus { status: 504, .. } => 504,
            ConnectError::TargetFailed {
                kind: TargetFault::Timeout,
                ..
            } => 504,
            ConnectError::Prohibited(_) => 403,
            _ => 502,
        }
    }

    /// RFC 1928 reply code for a client of the SOCKS5 listener.
    pub fn socks_reply(&self) -> u8 {
        match self {
            ConnectError::Refused { .. } => 0x05,
            ConnectError::Dns { .. } | ConnectError::Unreachable { .. } => 0x04,
            ConnectError::Timeout { .. } => 0x06,
            ConnectError::ProxyForbidden { .. } => 0x02,
            ConnectError::SocksReply { code } => *code,
            ConnectError::TargetFailed { kind, .. } => match kind {
                TargetFault::Refused => 0x05,
                TargetFault::Timeout => 0x06,
                TargetFault::Dns | TargetFault::Unreachable => 0x04,
            },
            ConnectError::NoRoute(_) => 0x03,
            ConnectError::Prohibited(_) => 0x02,
            _ => 0x01,
        }
    }

    /// The next hop the failure is about, if known: the upstream a target
    /// failure was reported through, or the proxy whose own name did not
    /// resolve (its host name).
    pub fn next_hop(&self) -> Option<&str> {
        match self {
            ConnectError::TargetFailed { next_hop, .. } => next_hop.as_deref(),
            ConnectError::Dns {
                host, proxy: true, ..
            } => Some(host),
            _ => None,
        }
    }

    /// Adds the elapsed deadline to a timeout error.
    pub fn timeout(phase: Phase, after: Duration, proxy: bool) -> Self {
        ConnectError::Timeout {
            phase,
            after,
            proxy,
        }
    }
}
