//! Name resolution for connections: static overrides first (like curl's
//! `--resolve`), then the system resolver, always under a deadline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::error::ConnectError;
use super::target::Host;

#[derive(Debug, Clone, Default)]
pub struct Resolver {
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl Resolver {
    pub fn new(overrides: HashMap<String, Vec<IpAddr>>) -> Self {
        let overrides = overrides
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        Resolver {
            overrides: Arc::new(overrides),
        }
    }

    /// Resolves `host:port` to socket addresses. `proxy` says whose name it is
    /// (for classifying the failure).
    pub async fn resolve(
        &self,
        host: &Host,
        port: u16,
        timeout: Duration,
        proxy: bool,
    ) -> Result<Vec<SocketAddr>, ConnectError> {
        match host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, port)]),
            Host::Name(name) => {
                if let Some(ips) = self.overrides.get(name.trim_end_matches('.')) {
                    return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
                }
                let lookup = tokio::net::lookup_host((name.as_str(), port));
                match tokio::time::timeout(timeout, lookup).await {
                    Err(_) => Err(unanswered(name, timeout, proxy)),
                    Ok(Err(e)) => Err(ConnectError::Dns {
                        host: name.clone(),
                        detail: e.to_string(),
                        proxy,
                    }),
                    Ok(Ok(addrs)) => {
                        let mut v: Vec<SocketAddr> = addrs.collect();
                        // Prefer IPv4 first then IPv6, keeping order within family,
                        // so a broken v6 path does not cost the first attempt.
                        v.sort_by_key(|a| a.is_ipv6());
                        if v.is_empty() {
                            Err(ConnectError::Dns {
                                host: name.clone(),
                                detail: "no addresses".into(),
                                proxy,
                            })
                        } else {
                            Ok(v)
                        }
                    }
                }
            }
        }
    }
}

/// A lookup the resolver did not answer in time (a dead or overloaded DNS
/// server): a DNS failure of this name, so it is reported as `dns_error`
/// naming the host and counted as the `dns` reason, not as a connect timeout.
/// (The blocking lookup may still finish in the background; nobody waits.)
fn unanswered(name: &str, timeout: Duration, proxy: bool) -> ConnectError {
    ConnectError::Dns {
        host: name.to_string(),
        detail: format!("no answer within {}ms", timeout.as_millis()),
        proxy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unanswered_lookup_is_a_dns_error_naming_the_host() {
        let e = unanswered("proxy-a.test", Duration::from_millis(1500), true);
        assert_eq!(e.proxy_status_error(), "dns_error");
        assert_eq!(e.http_status(), 502);
        assert_eq!(e.fault(), super::super::FaultClass::Upstream);
        assert_eq!(
            e.to_string(),
            "DNS lookup of proxy-a.test failed: no answer within 1500ms"
        );
        assert_eq!(e.next_hop(), Some("proxy-a.test"));
        let t = unanswered("origin.test", Duration::from_secs(1), false);
        assert_eq!(t.fault(), super::super::FaultClass::Target);
        assert_eq!(t.next_hop(), None, "a target's name is not a next hop");
    }

    #[tokio::test]
    async fn overrides_and_ip_literals_never_reach_the_resolver() {
        let mut m = HashMap::new();
        m.insert(
            "Proxy-A.test".to_string(),
            vec!["127.0.0.9".parse().unwrap()],
        );
        let r = Resolver::new(m);
        let t = Duration::from_millis(1);
        let got = r
            .resolve(&Host::Name("proxy-a.test.".into()), 3128, t, true)
            .await
            .unwrap();
        assert_eq!(got, vec!["127.0.0.9:3128".parse().unwrap()]);
        let ip = r
            .resolve(&Host::Ip("::1".parse().unwrap()), 80, t, false)
            .await
            .unwrap();
        assert_eq!(ip, vec!["[::1]:80".parse().unwrap()]);
    }
}
