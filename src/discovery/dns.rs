//! `kind = "dns"`: one upstream per address of `name` (A/AAAA, `port` from
//! the config) or per address of each SRV target (port, priority and weight
//! from the record). Refreshed every `interval` or the records' TTL,
//! whichever is shorter, never faster than [`MIN_INTERVAL`]. Members are
//! named `dns:NAME/IP:PORT`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::error::{ResolveError, ResolveErrorKind};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::TokioAsyncResolver;

use super::sink::host_port;
use super::{Discover, Sink};
use crate::config::discovery::{DnsRecord, DnsSpec, EntryConfig, MAX_MEMBERS, MIN_INTERVAL};
use crate::config::duration::Dur;
use crate::config::UpstreamEntry;
use crate::shutdown::Shutdown;

/// One query's wait for the name server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed round, the next try comes within this (or `interval`).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

pub struct Dns {
    spec: DnsSpec,
    resolver: TokioAsyncResolver,
}

/// What one SRV record or address contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub ip: IpAddr,
    pub port: u16,
    pub priority: u16,
    pub weight: u16,
}

impl Dns {
    pub fn new(spec: DnsSpec) -> Result<Dns, String> {
        let mut opts = ResolverOpts::default();
        // Every round asks the server: the refresh period already follows
        // the TTL, and a cache would hide a changed record set.
        opts.cache_size = 0;
        opts.timeout = QUERY_TIMEOUT;
        opts.attempts = 1;
        let config = match spec.server {
            Some(s) => {
                opts.use_hosts_file = false;
                ResolverConfig::from_parts(
                    None,
                    Vec::new(),
                    NameServerConfigGroup::from_ips_clear(&[s.ip()], s.port(), true),
                )
            }
            None => {
                let (c, _) = hickory_resolver::system_conf::read_system_conf()
                    .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
                c
            }
        };
        Ok(Dns {
            resolver: TokioAsyncResolver::tokio(config, opts),
            spec,
        })
    }

    /// The absolute query name (no search-list expansion).
    fn fqdn(name: &str) -> String {
        format!("{name}.")
    }

    /// The A and AAAA addresses of `name` (asked apart, so a server that
    /// fails one family fails the round instead of silently halving it).
    async fn addresses(&self, name: &str) -> Result<(Vec<IpAddr>, Instant), String> {
        let fq = Self::fqdn(name);
        let (v4, v6) = tokio::join!(
            self.resolver.ipv4_lookup(fq.clone()),
            self.resolver.ipv6_lookup(fq)
        );
        let mut ips = Vec::new();
        let mut until = Instant::now() + Duration::from_secs(3600);
        match v4 {
            Ok(l) => {
                until = until.min(l.valid_until());
                ips.extend(l.iter().map(|a| IpAddr::V4(a.0)));
            }
            Err(e) => no_records(name, "A", e)?,
        }
        match v6 {
            Ok(l) => {
                until = until.min(l.valid_until());
                ips.extend(l.iter().map(|a| IpAddr::V6(a.0)));
            }
            Err(e) => no_records(name, "AAAA", e)?,
        }
        Ok((ips, until))
    }

    /// One round: what the records say now, and when they expire.
    async fn round(&self) -> Result<(Vec<Found>, Instant), String> {
        match self.spec.record {
            DnsRecord::Addr { port } => {
                let (ips, until) = self.addresses(&self.spec.name).await?;
                let found = ips
                    .into_iter()
                    .map(|ip| Found {
                        ip,
                        port,
                        priority: 0,
                        weight: 1,
                    })
                    .collect();
                Ok((found, until))
            }
            DnsRecord::Srv => {
                let name = &self.spec.name;
                let srv = match self.resolver.srv_lookup(Self::fqdn(name)).await {
                    Ok(l) => l,
                    Err(e) => {
                        no_records(name, "SRV", e)?;
                        return Ok((Vec::new(), Instant::now()));
                    }
                };
                let mut until = srv.as_lookup().valid_until();
                let mut found = Vec::new();
                for r in srv.iter().take(MAX_MEMBERS) {
                    let target = r.target().to_ascii();
                    let target = target.trim_end_matches('.');
                    if target.is_empty() {
                        continue; // "." = the service is not offered there
                    }
                    let (ips, u) = self.addresses(target).await?;
                    if ips.is_empty() {
                        return Err(format!("{name} SRV: target {target} has no address"));
                    }
                    until = until.min(u);
                    found.extend(ips.into_iter().map(|ip| Found {
                        ip,
                        port: r.port(),
                        priority: r.priority(),
                        weight: r.weight(),
                    }));
                }
                Ok((found, until))
            }
        }
    }
}

/// An answer without records (NXDOMAIN, or no data) is an empty set; any
/// other failure (SERVFAIL, REFUSED, timeout, unreachable) fails the round.
fn no_records(name: &str, what: &str, e: ResolveError) -> Result<(), String> {
    match e.kind() {
        ResolveErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        } => Ok(()),
        ResolveErrorKind::NoRecordsFound { response_code, .. } => Err(format!(
            "{name} {what}: the name server answered {response_code}"
        )),
        _ => Err(format!("{name} {what}: {e}")),
    }
}

/// The pool entries for what was found: sorted and de-duplicated, so a
/// rotated answer is the same set.
pub fn entries(spec: &DnsSpec, found: &[Found]) -> Result<Vec<UpstreamEntry>, String> {
    let mut by_name: BTreeMap<String, UpstreamEntry> = BTreeMap::new();
    for f in found {
        let hp = host_port(f.ip, f.port);
        let name = format!("dns:{}/{hp}", spec.name);
        let cfg = EntryConfig {
            name: None,
            url: format!("{}://{hp}", spec.scheme),
            zone: None,
            priority: i32::from(f.priority),
            weight: u32::from(f.weight).max(1),
            max_fails: 3,
            fail_timeout: Dur::secs(10),
        };
        let e = cfg.to_entry(name.clone(), "dns")?;
        by_name.entry(name).or_insert(e);
    }
    let mut v: Vec<UpstreamEntry> = by_name.into_values().collect();
    v.sort_by_key(|e| e.priority);
    Ok(v)
}

/// When to ask again: `interval` or the TTL, whichever is sooner, never
/// under [`MIN_INTERVAL`].
pub fn next_refresh(interval: Duration, ttl_left: Duration) -> Duration {
    interval.min(ttl_left).max(MIN_INTERVAL)
}

impl Discover for Dns {
    fn run(self: Box<Self>, mut sink: Sink, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let wait = match self
                    .round()
                    .await
                    .and_then(|(found, until)| entries(&self.spec, &found).map(|e| (e, until)))
                {
                    Ok((set, until)) => {
                        // No records is kept like a failure: retried as one.
                        let left = if set.is_empty() {
                            RETRY_AFTER_ERROR
                        } else {
                            until.saturating_duration_since(Instant::now())
                        };
                        sink.report(Some(set), Vec::new());
                        next_refresh(self.spec.interval, left)
                    }
                    Err(e) => {
                        sink.report(None, vec![e]);
                        next_refresh(self.spec.interval, RETRY_AFTER_ERROR)
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.triggered() => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(record: DnsRecord) -> DnsSpec {
        DnsSpec {
            name: "_proxy._tcp.egress.test".into(),
            record,
            scheme: "http".into(),
            interval: Duration::from_secs(30),
            server: None,
        }
    }

    #[test]
    fn entries_are_named_sorted_and_deduplicated() {
        let f = |ip: &str, port, priority, weight| Found {
            ip: ip.parse().unwrap(),
            port,
            priority,
            weight,
        };
        let v = entries(
            &spec(DnsRecord::Srv),
            &[
                f("127.0.0.3", 3128, 10, 0),
                f("::1", 8080, 0, 5),
                f("127.0.0.2", 3128, 10, 7),
                f("127.0.0.3", 3128, 10, 0),
            ],
        )
        .unwrap();
        let names: Vec<&str> = v.iter().map(|e| e.spec.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dns:_proxy._tcp.egress.test/[::1]:8080",
                "dns:_proxy._tcp.egress.test/127.0.0.2:3128",
                "dns:_proxy._tcp.egress.test/127.0.0.3:3128",
            ]
        );
        assert_eq!((v[0].priority, v[0].weight), (0, 5));
        assert_eq!((v[2].priority, v[2].weight), (10, 1));
        assert_eq!(v[1].spec.redacted_url(), "http://127.0.0.2:3128");
        assert!(v.iter().all(|e| e.origin == "dns"));
    }

    #[test]
    fn refresh_follows_the_shorter_of_interval_and_ttl_bounded_below() {
        let s = Duration::from_secs;
        assert_eq!(next_refresh(s(30), s(5)), s(5));
        assert_eq!(next_refresh(s(2), s(300)), s(2));
        assert_eq!(next_refresh(s(30), s(0)), MIN_INTERVAL);
    }

    #[test]
    fn no_data_is_empty_but_servfail_refused_and_timeouts_fail() {
        use hickory_resolver::proto::op::Query;
        let answer = |rc: ResponseCode| -> ResolveError {
            ResolveErrorKind::NoRecordsFound {
                query: Box::new(Query::default()),
                soa: None,
                negative_ttl: None,
                response_code: rc,
                trusted: true,
            }
            .into()
        };
        assert!(no_records("a.test", "A", answer(ResponseCode::NXDomain)).is_ok());
        assert!(no_records("a.test", "A", answer(ResponseCode::NoError)).is_ok());
        let e = no_records("a.test", "A", answer(ResponseCode::ServFail)).unwrap_err();
        assert!(
            e.contains("a.test A") && e.contains("Server Failure"),
            "{e}"
        );
        assert!(no_records("a.test", "A", answer(ResponseCode::Refused)).is_err());
        assert!(no_records("a.test", "A", ResolveError::from("request timed out")).is_err());
    }
}
