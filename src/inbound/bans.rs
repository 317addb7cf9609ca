//! Brute-force protection for inbound credentials (`[auth] max_failures`,
//! `fail_window`, `ban_for`): after too many failed logins from one client
//! IP, that IP is refused without checking credentials until the ban ends.
//! Each repeat ban doubles, capped.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::security::BanSettings;

/// Client IPs tracked at most; beyond, entries with nothing active are dropped.
const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    window_start: Instant,
    banned_until: Option<Instant>,
    /// Bans so far (the next lasts `ban_for × 2^strikes`).
    strikes: u32,
    last_seen: Instant,
}

/// The ban table.
pub struct Bans {
    cfg: BanSettings,
    map: Mutex<HashMap<IpAddr, Entry>>,
}

/// One active ban, as `/status` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ActiveBan {
    pub client: String,
    pub remaining_secs: u64,
    pub strikes: u32,
}

impl Bans {
    pub fn new(cfg: BanSettings) -> Self {
        Bans {
            cfg,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// True while `ip` is banned.
    pub fn banned(&self, ip: IpAddr) -> bool {
        let ip = crate::acl::unmap(ip);
        let now = Instant::now();
        self.lock()
            .get(&ip)
            .and_then(|e| e.banned_until)
            .is_some_and(|t| t > now)
    }

    /// Records a failed login; returns the ban length when this failure
    /// starts a ban.
    pub fn failure(&self, ip: IpAddr) -> Option<Duration> {
        let ip = crate::acl::unmap(ip);
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(&ip) {
            let keep_for = self.cfg.max_ban;
            map.retain(|_, e| {
                e.banned_until.is_some_and(|t| t > now)
                    || now.duration_since(e.last_seen) < keep_for.min(self.cfg.fail_window)
            });
            if map.len() >= MAX_TRACKED {
                return None;
            }
        }
        let e = map.entry(ip).or_insert(Entry {
            failures: 0,
            window_start: now,
            banned_until: None,
            strikes: 0,
            last_seen: now,
        });
        e.last_seen = now;
        if now.duration_since(e.window_start) > self.cfg.fail_window {
            e.failures = 0;
            e.window_start = now;
        }
        e.failures += 1;
        if e.failures < self.cfg.max_failures {
            return None;
        }
        let factor = 1u32.checked_shl(e.strikes.min(20)).unwrap_or(u32::MAX);
        let len = self
            .cfg
            .ban_for
            .saturating_mul(factor)
            .min(self.cfg.max_ban.max(self.cfg.ban_for));
        e.strikes += 1;
        e.failures = 0;
        e.window_start = now;
        e.banned_until = Some(now + len);
        Some(len)
    }

    /// A successful login forgets the failures (not the strikes).
    pub fn success(&self, ip: IpAddr) {
        let ip = crate::acl::unmap(ip);
        if let Some(e) = self.lock().get_mut(&ip) {
            e.failures = 0;
        }
    }

    /// Active bans, longest remaining first.
    pub fn active(&self) -> Vec<ActiveBan> {
        let now = Instant::now();
        let mut v: Vec<ActiveBan> = self
            .lock()
            .iter()
            .filter_map(|(ip, e)| {
                let until = e.banned_until.filter(|t| *t > now)?;
                Some(ActiveBan {
                    client: ip.to_string(),
                    remaining_secs: until.duration_since(now).as_secs().max(1),
                    strikes: e.strikes,
                })
            })
            .collect();
        v.sort_by_key(|b| std::cmp::Reverse(b.remaining_secs));
        v
    }
}

/// Counts, logs and announces a new ban (event `auth_ban`).
pub fn announce(events: &crate::events::EventBus, ip: IpAddr, len: Duration, kind: &'static str) {
    metrics::counter!("proxyguard_auth_bans_total", "kind" => kind).increment(1);
    let detail = format!(
        "client {ip} banned for {} after repeated failed logins ({kind})",
        humantime::format_duration(len)
    );
    tracing::warn!(client = %ip, ban_secs = len.as_secs(), kind, "auth_ban: {detail}");
    events.emit("auth_ban", None, detail);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_after_max_failures_and_doubles() {
        let b = Bans::new(BanSettings {
            max_failures: 3,
            fail_window: Duration::from_secs(60),
            ban_for: Duration::from_secs(10),
            max_ban: Duration::from_secs(25),
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(b.failure(ip), None);
        assert_eq!(b.failure(ip), None);
        assert!(!b.banned(ip));
        assert_eq!(b.failure(ip), Some(Duration::from_secs(10)));
        assert!(b.banned(ip));
        assert!(b.banned("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!b.banned("192.0.2.2".parse().unwrap()));
        for _ in 0..2 {
            assert_eq!(b.failure(ip), None);
        }
        assert_eq!(b.failure(ip), Some(Duration::from_secs(20)));
        for _ in 0..2 {
            assert_eq!(b.failure(ip), None);
        }
        // 40 s would be next: capped at max_ban.
        assert_eq!(b.failure(ip), Some(Duration::from_secs(25)));
        let a = b.active();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].client, "192.0.2.1");
    }
}
