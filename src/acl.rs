//! The destination ACL: which targets clients of a listener may reach.
//!
//! Checked twice: on the name or literal the client sent (after normalising
//! numeric host forms such as `0x7f.1`, `2130706433` or `017700000001`, which
//! resolvers accept as IPv4), before any route is taken; and on every
//! resolved address proxyguard itself connects to (so DNS cannot smuggle a
//! denied address past the name check). proxyguard's own listeners and admin
//! address are always refused, by any spelling.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};

use ipnet::IpNet;

use crate::upstream::{Host, Target};

/// One `[acl]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    Loopback,
    LinkLocal,
    Metadata,
    Private,
    Net(IpNet),
    /// `*.internal` / `.internal`: the name and every name below it.
    Suffix(String),
    /// An exact host name.
    Name(String),
}

const METADATA_V4: [Ipv4Addr; 2] = [
    Ipv4Addr::new(169, 254, 169, 254),
    // Alibaba Cloud's metadata service.
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
const METADATA_NAMES: [&str; 2] = ["metadata.google.internal", "metadata"];

impl Rule {
    /// Parses a word, CIDR, IP, `*.suffix` or host name.
    pub fn parse(s: &str) -> Option<Rule> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "loopback" => return Some(Rule::Loopback),
            "link_local" => return Some(Rule::LinkLocal),
            "metadata" => return Some(Rule::Metadata),
            "private" => return Some(Rule::Private),
            "" => return None,
            _ => {}
        }
        if let Ok(n) = s.parse::<IpNet>() {
            return Some(Rule::Net(n));
        }
        let unbracketed = s.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = unbracketed.parse::<IpAddr>() {
            return Some(Rule::Net(IpNet::from(unmap(ip))));
        }
        let (suffix, name) = match s.strip_prefix("*.").or_else(|| s.strip_prefix('.')) {
            Some(rest) => (true, rest),
            None => (false, s.as_str()),
        };
        match Host::parse(name)? {
            Host::Name(n) if suffix => Some(Rule::Suffix(n)),
            Host::Name(n) => Some(Rule::Name(n)),
            Host::Ip(_) => None,
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        match self {
            Rule::Loopback => ip.is_loopback() || ip.is_unspecified(),
            Rule::LinkLocal => match ip {
                IpAddr::V4(v4) => v4.is_link_local(),
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
            },
            Rule::Metadata => match ip {
                IpAddr::V4(v4) => METADATA_V4.contains(&v4),
                IpAddr::V6(v6) => v6 == METADATA_V6,
            },
            Rule::Private => match ip {
                IpAddr::V4(v4) => {
                    v4.is_private() || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
                }
                IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,
            },
            Rule::Net(n) => n.contains(&ip),
            Rule::Suffix(_) | Rule::Name(_) => false,
        }
    }

    fn matches_name(&self, name: &str) -> bool {
        match self {
            Rule::Suffix(s) => {
                name == s
                    || (name.ends_with(s.as_str()) && name[..name.len() - s.len()].ends_with('.'))
            }
            Rule::Name(n) => name == n,
            Rule::Metadata => METADATA_NAMES.contains(&name),
            Rule::Loopback => is_localhost(name),
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:127.0.0.1`) is the IPv4 address it carries.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn is_localhost(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// Parses the numeric IPv4 forms `inet_aton` accepts (and so would the
/// system resolver): one to four parts, each decimal, octal (`0` prefix) or
/// hex (`0x`), the last filling the remaining bytes: `0x7f.1`,
/// `2130706433`, `017700000001`, `127.1`, `0`.
pub fn parse_numeric_ipv4(s: &str) -> Option<Ipv4Addr> {
    let s = s.strip_suffix('.').unwrap_or(s);
    let parts: Vec<&str> = s.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut nums = Vec::with_capacity(4);
    for p in &parts {
        let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or_else(|| p.strip_prefix("0X"))
        {
            (h, 16)
        } else if p.len() > 1 && p.starts_with('0') {
            (&p[1..], 8)
        } else {
            (*p, 10)
        };
        if digits.is_empty() && radix != 16 {
            return None;
        }
        let n = if digits.is_empty() {
            0
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        nums.push(n);
    }
    let last = nums.pop()?;
    let mut v: u64 = 0;
    for (i, n) in nums.iter().enumerate() {
        if *n > 255 {
            return None;
        }
        v |= n << (24 - 8 * i);
    }
    let room = 32 - 8 * nums.len();
    if last >= (1u64 << room) {
        return None;
    }
    Some(Ipv4Addr::from((v | last) as u32))
}

/// The host as the resolver would see it: numeric IPv4 forms become the
/// address, a trailing dot is dropped, mapped IPv6 is unmapped.
pub fn normalize(host: &Host) -> Host {
    match host {
        Host::Ip(ip) => Host::Ip(unmap(*ip)),
        Host::Name(n) => {
            let n = n.strip_suffix('.').unwrap_or(n);
            match parse_numeric_ipv4(n) {
                Some(ip) => Host::Ip(IpAddr::V4(ip)),
                None => Host::Name(n.to_string()),
            }
        }
    }
}

/// Why a destination was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("destination {target} prohibited: {reason}")]
pub struct Denied {
    pub target: String,
    /// `self`, `deny`, `not_allowed` or `port`.
    pub reason: &'static str,
}

/// `[acl]` as configured; defaults are applied per listener by [`Acl::new`].
#[derive(Debug, Clone, Default)]
pub struct AclRules {
    /// None: the default for the listener's address.
    pub deny: Option<Vec<Rule>>,
    pub allow: Vec<Rule>,
    pub connect_ports: Vec<u16>,
}

/// proxyguard's own listening addresses (filled in as listeners bind).
#[derive(Debug, Default)]
pub struct SelfAddrs(RwLock<Vec<SocketAddr>>);

impl SelfAddrs {
    pub fn add(&self, a: SocketAddr) {
        if let Ok(mut v) = self.0.write() {
            v.push(a);
        }
    }

    /// True when connecting to `dest` could reach one of our own sockets.
    pub fn contains(&self, dest: SocketAddr) -> bool {
        let ip = unmap(dest.ip());
        let Ok(list) = self.0.read() else {
            return true;
        };
        list.iter().any(|s| {
            s.port() == dest.port()
                && (unmap(s.ip()) == ip
                    || ip.is_loopback()
                    || ip.is_unspecified()
                    || (s.ip().is_unspecified() && is_local_ip(ip)))
        })
    }
}

/// True when `ip` is assigned to this host (binding to it succeeds).
fn is_local_ip(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// The effective ACL of one listener.
#[derive(Debug)]
pub struct Acl {
    deny: Vec<Rule>,
    allow: Vec<Rule>,
    connect_ports: Vec<u16>,
    own: Arc<SelfAddrs>,
}

/// What the name check decided about the allow list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameVerdict {
    /// The name itself is allowed: resolved addresses face only `deny`
    /// entries it does not lift, and the self check.
    AllowedByName,
    /// Resolved addresses decide (allow list of addresses, or no allow list).
    CheckAddresses,
}

impl Acl {
    /// The ACL for a listener on `listen`: an unset `deny` means
    /// `loopback, link_local, metadata` off loopback and nothing on it.
    pub fn new(rules: &AclRules, listen: SocketAddr, own: Arc<SelfAddrs>) -> Acl {
        let deny = match &rules.deny {
            Some(d) => d.clone(),
            None if listen.ip().is_loopback() => Vec::new(),
            None => vec![Rule::Loopback, Rule::LinkLocal, Rule::Metadata],
        };
        Acl {
            deny,
            allow: rules.allow.clone(),
            connect_ports: rules.connect_ports.clone(),
            own,
        }
    }

    fn denied(target: impl ToString, reason: &'static str) -> Denied {
        Denied {
            target: target.to_string(),
            reason,
        }
    }

    /// Checks what the client asked for (already [`normalize`]d), before
    /// routing. `tunnel` applies `connect_ports`.
    pub fn check_target(&self, t: &Target, tunnel: bool) -> Result<NameVerdict, Denied> {
        if tunnel && !self.connect_ports.is_empty() && !self.connect_ports.contains(&t.port) {
            return Err(Self::denied(t, "port"));
        }
        match &t.host {
            Host::Ip(ip) => {
                self.check_addr(SocketAddr::new(*ip, t.port), NameVerdict::CheckAddresses)?;
                Ok(NameVerdict::CheckAddresses)
            }
            Host::Name(n) if is_localhost(n) => {
                for ip in [
                    IpAddr::V4(Ipv4Addr::LOCALHOST),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ] {
                    if self.own.contains(SocketAddr::new(ip, t.port)) {
                        return Err(Self::denied(t, "self"));
                    }
                }
                self.check_name(t, n)
            }
            Host::Name(n) => self.check_name(t, n),
        }
    }

    fn check_name(&self, t: &Target, n: &str) -> Result<NameVerdict, Denied> {
        let allowed = self.allow.iter().any(|r| r.matches_name(n));
        if !allowed && self.deny.iter().any(|r| r.matches_name(n)) {
            return Err(Self::denied(t, "deny"));
        }
        if allowed {
            return Ok(NameVerdict::AllowedByName);
        }
        let allow_has_addresses = self
            .allow
            .iter()
            .any(|r| !matches!(r, Rule::Suffix(_) | Rule::Name(_)));
        if !self.allow.is_empty() && !allow_has_addresses {
            return Err(Self::denied(t, "not_allowed"));
        }
        Ok(NameVerdict::CheckAddresses)
    }

    /// Checks one address proxyguard is about to connect to.
    pub fn check_addr(&self, a: SocketAddr, verdict: NameVerdict) -> Result<(), Denied> {
        if self.own.contains(a) {
            return Err(Self::denied(a, "self"));
        }
        let ip = a.ip();
        let allowed =
            verdict == NameVerdict::AllowedByName || self.allow.iter().any(|r| r.matches_ip(ip));
        if !allowed && self.deny.iter().any(|r| r.matches_ip(ip)) {
            return Err(Self::denied(a, "deny"));
        }
        if !allowed && !self.allow.is_empty() {
            return Err(Self::denied(a, "not_allowed"));
        }
        Ok(())
    }
}

/// The ACL in force for the connection attempts of one client request.
#[derive(Clone)]
pub struct Scope {
    pub acl: Arc<Acl>,
    pub verdict: NameVerdict,
}

tokio::task_local! {
    static SCOPE: Scope;
}

/// Runs `fut` (a client's connect attempts) under `scope`.
pub async fn scoped<F: std::future::Future>(scope: Scope, fut: F) -> F::Output {
    SCOPE.scope(scope, fut).await
}

/// Checks addresses resolved for a direct connection against the scope of
/// the current client request, if any (health checks, doctor and reverse
/// backends run outside any scope).
pub fn check_resolved(addrs: &[SocketAddr]) -> Result<(), Denied> {
    SCOPE
        .try_with(|s| {
            addrs
                .iter()
                .try_for_each(|a| s.acl.check_addr(*a, s.verdict))
        })
        .unwrap_or(Ok(()))
}

/// Counts and logs a refusal.
pub fn record(d: &Denied, client: SocketAddr, kind: &'static str) {
    metrics::counter!("proxyguard_acl_denied_total", "kind" => kind, "reason" => d.reason)
        .increment(1);
    tracing::warn!(target: "access", kind, client = %client, target = %d.target, reason = d.reason, "destination prohibited by [acl]");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(deny: Option<&[&str]>, allow: &[&str], ports: &[u16], listen: &str) -> Acl {
        let rules = AclRules {
            deny: deny.map(|d| d.iter().map(|s| Rule::parse(s).unwrap()).collect()),
            allow: allow.iter().map(|s| Rule::parse(s).unwrap()).collect(),
            connect_ports: ports.to_vec(),
        };
        let own = Arc::new(SelfAddrs::default());
        own.add("127.0.0.1:3128".parse().unwrap());
        own.add("0.0.0.0:9090".parse().unwrap());
        Acl::new(&rules, listen.parse().unwrap(), own)
    }

    fn target(s: &str) -> Target {
        let t = Target::parse_authority(s, None).unwrap();
        Target::new(normalize(&t.host), t.port)
    }

    #[test]
    fn numeric_forms_normalise() {
        for s in [
            "0x7f.1",
            "2130706433",
            "017700000001",
            "127.1",
            "0x7f000001",
            "127.0.0.1.",
            "0177.0.0.1",
        ] {
            assert_eq!(parse_numeric_ipv4(s), Some(Ipv4Addr::LOCALHOST), "{s}");
        }
        assert_eq!(parse_numeric_ipv4("0"), Some(Ipv4Addr::UNSPECIFIED));
        // inet_aton reads a bare "0x" as zero: so do we (refused as loopback).
        assert_eq!(parse_numeric_ipv4("0x"), Some(Ipv4Addr::UNSPECIFIED));
        for s in [
            "example.com",
            "1.2.3.4.5",
            "256.1.1.1",
            "08",
            "1e3",
            "",
            "4294967296",
        ] {
            assert_eq!(parse_numeric_ipv4(s), None, "{s}");
        }
        assert_eq!(
            normalize(&Host::Ip("::ffff:127.0.0.1".parse().unwrap())),
            Host::Ip("127.0.0.1".parse().unwrap())
        );
    }

    #[test]
    fn own_addresses_refused_by_any_spelling() {
        let a = acl(None, &[], &[], "127.0.0.1:3128");
        for s in [
            "127.0.0.1:3128",
            "0x7f.1:3128",
            "2130706433:3128",
            "0:3128",
            "localhost:3128",
            "[::1]:3128",
            "[::ffff:127.0.0.1]:3128",
            "127.0.0.2:9090",
            "0.0.0.0:9090",
            "017700000001:9090",
            "LOCALHOST.:9090",
        ] {
            let t = target(s);
            assert_eq!(a.check_target(&t, true).unwrap_err().reason, "self", "{s}");
        }
        assert!(a.check_target(&target("127.0.0.1:8080"), true).is_ok());
        assert!(a
            .check_addr(
                "127.0.0.1:3128".parse().unwrap(),
                NameVerdict::AllowedByName
            )
            .is_err());
    }

    #[test]
    fn defaults_depend_on_the_listener() {
        let open = acl(None, &[], &[], "0.0.0.0:3128");
        for s in [
            "127.0.0.1:80",
            "169.254.169.254:80",
            "100.100.100.200:80",
            "[fd00:ec2::254]:80",
            "[fe80::1]:80",
            "localhost:80",
            "metadata.google.internal:80",
            "0x7f.1:80",
        ] {
            assert_eq!(
                open.check_target(&target(s), false).unwrap_err().reason,
                "deny",
                "{s}"
            );
        }
        assert!(open.check_target(&target("10.1.2.3:80"), false).is_ok());
        let local = acl(None, &[], &[], "127.0.0.1:3128");
        assert!(local.check_target(&target("127.0.0.1:80"), false).is_ok());
        assert!(local
            .check_target(&target("169.254.169.254:80"), false)
            .is_ok());
        // Opening up: allow lifts a default deny; deny = [] drops them.
        let lifted = acl(None, &["loopback", "10.0.0.0/8"], &[], "0.0.0.0:3128");
        assert!(lifted.check_target(&target("127.0.0.1:80"), false).is_ok());
        assert_eq!(
            lifted
                .check_target(&target("8.8.8.8:80"), false)
                .unwrap_err()
                .reason,
            "not_allowed"
        );
        let none = acl(Some(&[]), &[], &[], "0.0.0.0:3128");
        assert!(none.check_target(&target("127.0.0.1:80"), false).is_ok());
    }

    #[test]
    fn names_suffixes_ports_and_resolved_addresses() {
        let a = acl(
            Some(&["*.internal", "10.0.0.0/8", "evil.example"]),
            &[],
            &[443, 8443],
            "127.0.0.1:1",
        );
        assert_eq!(
            a.check_target(&target("db.internal:443"), true)
                .unwrap_err()
                .reason,
            "deny"
        );
        assert_eq!(
            a.check_target(&target("internal:443"), true)
                .unwrap_err()
                .reason,
            "deny"
        );
        assert!(a.check_target(&target("notinternal:443"), true).is_ok());
        assert_eq!(
            a.check_target(&target("evil.example:443"), true)
                .unwrap_err()
                .reason,
            "deny"
        );
        assert_eq!(
            a.check_target(&target("good.example:22"), true)
                .unwrap_err()
                .reason,
            "port"
        );
        assert!(a.check_target(&target("good.example:22"), false).is_ok());
        let v = a.check_target(&target("good.example:443"), true).unwrap();
        assert_eq!(v, NameVerdict::CheckAddresses);
        assert!(a.check_addr("10.9.9.9:443".parse().unwrap(), v).is_err());
        assert!(a.check_addr("11.9.9.9:443".parse().unwrap(), v).is_ok());
        let names_only = acl(Some(&[]), &["*.example.com"], &[], "127.0.0.1:1");
        assert_eq!(
            names_only.check_target(&target("a.example.com:80"), false),
            Ok(NameVerdict::AllowedByName)
        );
        assert_eq!(
            names_only
                .check_target(&target("a.example.org:80"), false)
                .unwrap_err()
                .reason,
            "not_allowed"
        );
        assert_eq!(Rule::parse("[::1]"), Rule::parse("::1/128"));
        assert!(Rule::parse("bogus word!").is_none());
        assert!(Rule::parse("").is_none());
    }
}
