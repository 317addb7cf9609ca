//! Name resolution for connections: static overrides first (like curl's
//! `--resolve`), then the system resolver, always under a deadline.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::error::{ConnectError, Phase};
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
                    Err(_) => Err(ConnectError::timeout(Phase::Dns, timeout, proxy)),
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
