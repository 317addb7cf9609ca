//! TCP keep-alive (`SO_KEEPALIVE` with idle time, probe interval and probe
//! count) on client, upstream and tunnel sockets.
//!
//! Why: NAT gateways, SLBs and firewalls forget a connection that carries
//! no packets for their idle timeout, and most forget it *silently* — the
//! next write goes nowhere, or draws a reset. Keep-alive probes are packets,
//! so they keep such a middlebox's entry alive, and when the far end is
//! gone they find that out within `idle + interval × count` instead of on
//! the next request.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration::Dur;

/// Keep-alive as applied to sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between unanswered probes.
    pub interval: Duration,
    /// Unanswered probes before the kernel drops the connection.
    pub count: u32,
}

impl Default for TcpKeepalive {
    /// Well below the idle timeouts of cloud NAT gateways and load
    /// balancers; a dead peer is found within 60 s.
    fn default() -> Self {
        TcpKeepalive {
            idle: Duration::from_secs(30),
            interval: Duration::from_secs(10),
            count: 3,
        }
    }
}

impl TcpKeepalive {
    /// Sets it on `sock`. Failure is not fatal (the socket works without):
    /// logged at debug.
    pub fn apply<S: std::os::fd::AsFd>(&self, sock: &S) {
        let ka = socket2::TcpKeepalive::new()
            .with_time(self.idle)
            .with_interval(self.interval)
            .with_retries(self.count);
        if let Err(e) = socket2::SockRef::from(sock).set_tcp_keepalive(&ka) {
            tracing::debug!(error = %e, "could not set TCP keep-alive");
        }
    }
}

/// Applies `ka` (when on) to `sock`.
pub fn apply<S: std::os::fd::AsFd>(ka: Option<TcpKeepalive>, sock: &S) {
    if let Some(ka) = ka {
        ka.apply(sock);
    }
}

/// `[timeouts] tcp_keepalive` as written: `"off"`, an idle time (`"30s"`:
/// probes every third of it, at least 1 s, three of them), or a table
/// `{ idle = "30s", interval = "10s", count = 3 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeepaliveConfig {
    Short(String),
    Table {
        idle: Dur,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval: Option<Dur>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        count: Option<u32>,
    },
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        KeepaliveConfig::Short("30s".into())
    }
}

impl KeepaliveConfig {
    /// The typed setting (`None` = off), or why the value is wrong.
    pub fn settings(&self) -> Result<Option<TcpKeepalive>, String> {
        let (idle, interval, count) = match self {
            KeepaliveConfig::Short(s) if s.trim() == "off" => return Ok(None),
            KeepaliveConfig::Short(s) => {
                let idle = crate::config::duration::parse(s).map_err(|e| {
                    format!("{s:?}: expected \"off\", an idle time like \"30s\" or {{ idle, interval, count }} ({e})")
                })?;
                (idle, None, None)
            }
            KeepaliveConfig::Table {
                idle,
                interval,
                count,
            } => (idle.0, interval.map(|d| d.0), *count),
        };
        let interval = interval.unwrap_or_else(|| (idle / 3).max(Duration::from_secs(1)));
        let count = count.unwrap_or(3);
        // The kernel counts in whole seconds (Linux: 1..=32767).
        let secs = |d: Duration| (1..=32_767).contains(&d.as_secs());
        if !secs(idle) || !secs(interval) {
            return Err("idle and interval must be between 1s and 32767s".into());
        }
        if !(1..=127).contains(&count) {
            return Err(format!("count {count}: must be between 1 and 127"));
        }
        Ok(Some(TcpKeepalive {
            idle,
            interval,
            count,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_value: &str) -> Result<Option<TcpKeepalive>, String> {
        #[derive(Deserialize)]
        struct W {
            k: KeepaliveConfig,
        }
        let w: W = toml::from_str(&format!("k = {toml_value}")).map_err(|e| e.to_string())?;
        w.k.settings()
    }

    #[test]
    fn forms() {
        let s = Duration::from_secs;
        assert_eq!(parse("\"off\""), Ok(None));
        assert_eq!(
            parse("\"30s\""),
            Ok(Some(TcpKeepalive {
                idle: s(30),
                interval: s(10),
                count: 3
            }))
        );
        assert_eq!(parse("\"2s\"").unwrap().unwrap().interval, s(1));
        assert_eq!(
            parse("{ idle = \"1m\", interval = \"5s\", count = 4 }"),
            Ok(Some(TcpKeepalive {
                idle: s(60),
                interval: s(5),
                count: 4
            }))
        );
        assert_eq!(
            KeepaliveConfig::default().settings(),
            Ok(Some(TcpKeepalive::default()))
        );
        for bad in ["\"soon\"", "\"500ms\"", "{ idle = \"30s\", count = 0 }"] {
            assert!(parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn applied_to_a_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let ka = TcpKeepalive {
            idle: Duration::from_secs(7),
            interval: Duration::from_secs(2),
            count: 5,
        };
        apply(Some(ka), &s);
        let r = socket2::SockRef::from(&s);
        assert!(r.keepalive().unwrap());
        assert_eq!(r.keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(r.keepalive_interval().unwrap(), Duration::from_secs(2));
        assert_eq!(r.keepalive_retries().unwrap(), 5);
        let plain = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        apply(None, &plain);
        assert!(!socket2::SockRef::from(&plain).keepalive().unwrap());
    }
}
