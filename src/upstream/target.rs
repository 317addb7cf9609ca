//! The destination a client asked for.

use std::fmt;
use std::net::IpAddr;

/// A host name or an address literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl Host {
    /// Parses a host as it appears in an authority: brackets allowed for IPv6.
    pub fn parse(s: &str) -> Option<Host> {
        let s = s.trim();
        if s.is_empty() {
            return None;
        }
        let unbracketed = s
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Some(Host::Ip(ip));
        }
        if s.starts_with('[') {
            return None;
        }
        let valid = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if !valid || s.len() > 253 {
            return None;
        }
        Some(Host::Name(s.to_ascii_lowercase()))
    }

    /// The host without brackets, as used for DNS and NO_PROXY.
    pub fn bare(&self) -> String {
        match self {
            Host::Name(n) => n.clone(),
            Host::Ip(ip) => ip.to_string(),
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A destination `host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
}

impl Target {
    pub fn new(host: Host, port: u16) -> Self {
        Target { host, port }
    }

    /// Parses `host:port` (CONNECT authority form); `default_port` applies when
    /// the port is missing.
    pub fn parse_authority(s: &str, default_port: Option<u16>) -> Option<Target> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let end = rest.find(']')?;
            let host = &s[..end + 2];
            let after = &rest[end + 1..];
            match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None if after.is_empty() => (host, None),
                None => return None,
            }
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h, Some(p)),
                Some(_) => return None,
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) => p.parse::<u16>().ok().filter(|p| *p != 0)?,
            None => default_port?,
        };
        Some(Target {
            host: Host::parse(host)?,
            port,
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_authorities() {
        let t = Target::parse_authority("Example.com:443", None).unwrap();
        assert_eq!(t.host, Host::Name("example.com".into()));
        assert_eq!(t.port, 443);
        let t = Target::parse_authority("[::1]:8080", None).unwrap();
        assert_eq!(t.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(t.to_string(), "[::1]:8080");
        assert_eq!(
            Target::parse_authority("example.com", Some(80))
                .unwrap()
                .port,
            80
        );
        assert!(Target::parse_authority("example.com", None).is_none());
        assert!(Target::parse_authority("example.com:0", None).is_none());
        assert!(Target::parse_authority("example.com:99999", None).is_none());
        assert!(Target::parse_authority("exa mple.com:80", None).is_none());
        assert!(Target::parse_authority("::1:80", None).is_none());
        assert!(Target::parse_authority("[::1]x", None).is_none());
        assert!(Target::parse_authority(":80", None).is_none());
    }
}
