//! `NO_PROXY` matching with exactly the semantics of Go's
//! `golang.org/x/net/http/httpproxy` (the code behind
//! `net/http.ProxyFromEnvironment`).
//!
//! Why copy Go rather than curl or a "nicer" rule set? proxyguard's doctor
//! has to predict what the tools on the machine will do, and most of the
//! cloud tooling we sit in front of (Terraform, the Alibaba Cloud CLI,
//! kubectl, Docker, ...) is written in Go. Mirroring Go bug-for-bug means
//! a diagnosis based on this module matches what those tools really do.
//!
//! The rules, per comma-separated entry (lower-cased and trimmed, empty
//! entries skipped):
//!
//! * `*` disables proxying for every host (and ends parsing: later entries
//!   are irrelevant);
//! * `10.0.0.0/8`, `2001:db8::/32`: CIDR blocks, matched against IP hosts;
//! * `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]:80`: IPs, with an optional port;
//! * `foo.com` matches `foo.com` and every subdomain, `.foo.com` and
//!   `*.foo.com` only subdomains; all of them may carry a `:port`;
//! * anything else is treated as a domain suffix too, even if it can never
//!   match (Go "makes a best effort and ignores errors").
//!
//! Independently of the list, `localhost` and loopback IPs are never
//! proxied.
//!
//! Known difference: Go converts non-ASCII entries and hosts to punycode
//! (IDNA "Lookup" profile) before comparing. We only lower-case ASCII, so a
//! Unicode entry only matches the same Unicode host, not its `xn--` form.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// A parsed `NO_PROXY` list. Cheap to query; build it once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    /// `*` was present: everything goes direct.
    all: bool,
    /// CIDR entries.
    cidrs: Vec<IpNet>,
    /// Single-IP entries.
    ips: Vec<IpRule>,
    /// Domain-suffix entries.
    domains: Vec<DomainRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct IpRule {
    ip: IpAddr,
    /// Empty means "any port". Kept as text because Go compares port
    /// strings, so `example.com:080` never matches port 80.
    port: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DomainRule {
    /// Always starts with `.`, e.g. `.example.com`.
    suffix: String,
    port: String,
    /// The entry had no leading `.`/`*.`, so the bare name matches as well.
    match_host: bool,
}

impl NoProxy {
    /// A list that bypasses nothing (besides localhost/loopback).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Builds the list from individual entries, as Go's `config.init` does
    /// for the comma-split `NO_PROXY` value.
    pub fn parse<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut np = Self::default();
        for entry in entries {
            let entry = entry.as_ref().trim().to_ascii_lowercase();
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                // Go replaces all matchers with "match all" and stops.
                return Self {
                    all: true,
                    ..Self::default()
                };
            }
            np.push_entry(&entry);
        }
        np
    }

    /// Builds the list from an environment value such as
    /// `"localhost,.corp,10.0.0.0/8"`.
    pub fn from_env_value(value: &str) -> Self {
        Self::parse(value.split(','))
    }

    /// True when the list contains `*`.
    pub fn matches_all(&self) -> bool {
        self.all
    }

    /// True when no entry was accepted (localhost/loopback still bypass).
    pub fn is_empty(&self) -> bool {
        !self.all && self.cidrs.is_empty() && self.ips.is_empty() && self.domains.is_empty()
    }

    fn push_entry(&mut self, entry: &str) {
        if let Some(net) = parse_cidr(entry) {
            self.cidrs.push(net);
            return;
        }
        // `host:port` or `[v6]:port`; otherwise the whole entry is the host.
        let (host, port) = match split_host_port(entry) {
            // e.g. ":80" – malformed, Go ignores it.
            Some(("", _)) => return,
            Some((host, port)) => (strip_brackets(host), port),
            // No port: the entry is the host, brackets and all, so Go
            // never recognises "[2001:db8::1]" as an IP.
            None => (entry, ""),
        };
        if let Some(ip) = parse_ip(host) {
            self.ips.push(IpRule {
                ip,
                port: port.to_owned(),
            });
            return;
        }
        if host.is_empty() {
            return;
        }
        // `*.foo.com` is the same as `.foo.com` (Go drops the `*`).
        let host = host
            .strip_prefix('*')
            .filter(|rest| rest.starts_with('.'))
            .unwrap_or(host);
        let (suffix, match_host) = if host.starts_with('.') {
            (host.to_owned(), false)
        } else {
            (format!(".{host}"), true)
        };
        self.domains.push(DomainRule {
            suffix,
            port: port.to_owned(),
            match_host,
        });
    }

    /// Should a request to `host:port` bypass the proxy (go direct)?
    ///
    /// `host` may be a name, an IPv4 address or an IPv6 address with or
    /// without brackets. `port` is the effective port, i.e. the scheme's
    /// default (80/443) when the URL has none — Go matches entries such as
    /// `example.com:443` against that default port.
    pub fn bypass(&self, host: &str, port: u16) -> bool {
        let host = strip_brackets(host);
        // Go compares against "localhost" before lower-casing, so
        // `LOCALHOST` is *not* special (it may still match the list).
        if host == "localhost" {
            return true;
        }
        let ip = parse_ip(host);
        if ip.is_some_and(is_loopback) {
            return true;
        }
        if self.all {
            return true;
        }
        let host = host.trim().to_ascii_lowercase();
        let port = port.to_string();
        if let Some(ip) = ip {
            if self.cidrs.iter().any(|net| net.contains(&ip)) {
                return true;
            }
            if self
                .ips
                .iter()
                .any(|r| r.ip == ip && (r.port.is_empty() || r.port == port))
            {
                return true;
            }
        }
        // Domain rules apply to IP hosts too: Go matches `2.3.4` against
        // `1.2.3.4` by plain suffix comparison.
        self.domains.iter().any(|r| {
            let name_matches = host.ends_with(&r.suffix)
                || (r.match_host && r.suffix.get(1..) == Some(host.as_str()));
            name_matches && (r.port.is_empty() || r.port == port)
        })
    }
}

fn strip_brackets(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// Go's `net.IP.IsLoopback`: 127/8 (also as `::ffff:127.x.y.z`) or `::1`.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// Go's `net.ParseIP`, returning IPv4-mapped IPv6 addresses as IPv4 so that
/// equality and CIDR containment behave like Go's 4-/16-byte `net.IP`.
pub(crate) fn parse_ip(s: &str) -> Option<IpAddr> {
    let first = s.bytes().find(|b| *b == b'.' || *b == b':')?;
    let ip = if first == b'.' {
        IpAddr::V4(parse_ipv4(s)?)
    } else {
        IpAddr::V6(s.parse::<Ipv6Addr>().ok()?)
    };
    Some(ip.to_canonical())
}

/// Go's `parseIPv4`: four decimal octets, no leading zeros (except "0").
fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty()
            || part.len() > 3
            || !part.bytes().all(|b| b.is_ascii_digit())
            || (part.len() > 1 && part.starts_with('0'))
        {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Go's `net.ParseCIDR` plus the way `IPNet.Contains` treats an IPv6
/// network whose (masked) address is IPv4-mapped: it behaves as the IPv4
/// network of the last 32 bits, so `::ffff:0:0/96` contains every IPv4.
fn parse_cidr(s: &str) -> Option<IpNet> {
    let (addr, bits) = s.split_once('/')?;
    // Go's `dtoi`: decimal digits only, leading zeros allowed.
    if bits.is_empty() || !bits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let bits: u8 = bits.parse().ok()?;
    if let Some(v4) = parse_ipv4(addr) {
        return Ipv4Net::new(v4, bits).ok().map(|n| IpNet::V4(n.trunc()));
    }
    let v6: Ipv6Addr = addr.parse().ok()?;
    let net = Ipv6Net::new(v6, bits).ok()?.trunc();
    match net.network().to_ipv4_mapped() {
        Some(v4) if bits >= 96 => Ipv4Net::new(v4, bits - 96).ok().map(IpNet::V4),
        // A mapped network with a shorter prefix cannot be mapped after
        // masking, so this arm only sees plain IPv6 networks.
        _ => Some(IpNet::V6(net)),
    }
}

/// Go's `net.SplitHostPort`, returning `None` where Go returns an error.
/// The port is not validated (Go does not either).
pub(crate) fn split_host_port(s: &str) -> Option<(&str, &str)> {
    let i = s.rfind(':')?;
    let (host, j, k) = if s.starts_with('[') {
        let end = s.find(']')?;
        if end + 1 != i {
            return None; // missing port or too many colons
        }
        (&s[1..end], 1, end + 1)
    } else {
        let host = &s[..i];
        if host.contains(':') {
            return None; // too many colons
        }
        (host, 0, 0)
    };
    if s[j..].contains('[') || s[k..].contains(']') {
        return None;
    }
    Some((host, &s[i + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn np(v: &str) -> NoProxy {
        NoProxy::from_env_value(v)
    }

    #[test]
    fn domains_and_suffixes() {
        let n = np("example.com, .sub.org, *.star.net");
        assert!(n.bypass("example.com", 80));
        assert!(n.bypass("a.b.example.com", 443));
        assert!(!n.bypass("notexample.com", 80));
        assert!(!n.bypass("sub.org", 80));
        assert!(n.bypass("x.sub.org", 80));
        assert!(!n.bypass("star.net", 80));
        assert!(n.bypass("x.star.net", 80));
        assert!(n.bypass("EXAMPLE.COM", 80));
        // Trailing dots are compared literally.
        assert!(!n.bypass("example.com.", 80));
    }

    #[test]
    fn ports_are_compared_as_text() {
        let n = np("example.com:8080,1.2.3.4:443,[2001:db8::1]:80,padded.com:080");
        assert!(n.bypass("example.com", 8080));
        assert!(!n.bypass("example.com", 80));
        assert!(n.bypass("1.2.3.4", 443));
        assert!(!n.bypass("1.2.3.4", 80));
        assert!(n.bypass("[2001:db8::1]", 80));
        assert!(n.bypass("2001:db8::1", 80));
        assert!(!n.bypass("2001:db8::1", 443));
        assert!(!n.bypass("padded.com", 80));
    }

    #[test]
    fn ips_and_cidrs() {
        let n = np("10.0.0.0/8,2001:db8::/32,192.168.1.1,::ffff:0:0/96");
        assert!(n.bypass("10.1.2.3", 80));
        assert!(n.bypass("2001:db8:1::5", 80));
        assert!(n.bypass("[2001:db8:1::5]", 80));
        assert!(n.bypass("192.168.1.1", 1));
        assert!(n.bypass("::ffff:192.168.1.1", 1));
        assert!(!n.bypass("2001:db9::1", 80));
        // The mapped /96 behaves as 0.0.0.0/0 in Go.
        assert!(n.bypass("8.8.8.8", 80));
        let n = np("10.0.0.0/8");
        assert!(!n.bypass("11.0.0.1", 80));
        assert!(!n.bypass("::a00:1", 80));
    }

    #[test]
    fn loopback_and_localhost_never_proxied() {
        let n = NoProxy::empty();
        assert!(n.is_empty());
        assert!(n.bypass("localhost", 80));
        assert!(n.bypass("127.0.0.1", 80));
        assert!(n.bypass("127.9.9.9", 80));
        assert!(n.bypass("::1", 80));
        assert!(n.bypass("[::1]", 80));
        assert!(n.bypass("::ffff:127.0.0.1", 80));
        // Go compares "localhost" case-sensitively before lower-casing.
        assert!(!n.bypass("LOCALHOST", 80));
        assert!(!n.bypass("localhost.", 80));
    }

    #[test]
    fn star_and_malformed_entries() {
        assert!(np("foo,*,bar").bypass("anything", 1));
        assert!(np("*").matches_all());
        let n = np(" , ,:80,[::1],example.com:80:90");
        assert!(!n.bypass("example.com", 80));
        assert!(!n.bypass("x", 80));
        // A bracketed IPv6 entry without a port is a (useless) domain rule.
        assert!(!np("[2001:db8::1]").bypass("2001:db8::1", 80));
        // Domain rules are applied to IP hosts by suffix.
        assert!(np("2.3.4").bypass("1.2.3.4", 80));
        // Leading zeros: not an IP for Go, so a domain rule.
        assert!(!np("010.0.0.1").bypass("10.0.0.1", 80));
    }

    #[test]
    fn cidr_parsing_matches_go() {
        assert!(parse_cidr("10.0.0.0/08").is_some());
        assert!(parse_cidr("10.0.0.0/33").is_none());
        assert!(parse_cidr("10.0.0.0/").is_none());
        assert!(parse_cidr("10.0.0.0/8x").is_none());
        assert!(parse_cidr("::/129").is_none());
        assert!(parse_cidr("10.0.0.1/8")
            .is_some_and(|n| n.contains(&"10.9.9.9".parse::<IpAddr>().unwrap())));
    }

    #[test]
    fn split_host_port_like_go() {
        assert_eq!(split_host_port("a:1"), Some(("a", "1")));
        assert_eq!(split_host_port("a:"), Some(("a", "")));
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", "80")));
        assert_eq!(split_host_port("::1"), None);
        assert_eq!(split_host_port("[::1]"), None);
        assert_eq!(split_host_port("a"), None);
        assert_eq!(split_host_port("a]:1"), None);
        assert_eq!(split_host_port("[a]x:1"), None);
    }
}
