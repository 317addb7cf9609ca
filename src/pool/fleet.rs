//! The pool's side of fleet health (src/fleet/ talks to etcd): verdicts
//! this gateway publishes, and the fleet's reports applied to members.

use super::{Member, Pool};
use crate::upstream::UpstreamSpec;

/// One verdict of this gateway about one upstream, for the publisher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// [`identity`] of the upstream.
    pub identity: String,
    pub down: bool,
    /// Reason label (`timeout`, `refused`, `auth`, `check_failed`, ...; `ok` when up).
    pub reason: &'static str,
}

/// The name every gateway gives the same upstream: `scheme://host:port`.
/// Never credentials (it goes into etcd keys). None for `direct`.
pub fn identity(spec: &UpstreamSpec) -> Option<String> {
    if spec.is_direct() {
        return None;
    }
    Some(format!(
        "{}://{}:{}",
        spec.scheme.as_str(),
        spec.host,
        spec.port
    ))
}

impl Pool {
    /// Starts handing this gateway's verdicts to `tx` (once per pool).
    pub fn set_fleet_sink(&self, tx: tokio::sync::mpsc::UnboundedSender<Verdict>) {
        let _ = self.fleet_sink.set(tx);
    }

    /// After an outcome or transition of `m`: publishes its own verdict when
    /// it changed (nothing without `[fleet]`).
    pub(super) fn fleet_note(&self, m: &Member) {
        let Some(tx) = self.fleet_sink.get() else {
            return;
        };
        let Some(identity) = identity(m.spec()) else {
            return;
        };
        m.health.fleet_publish(|down, reason| {
            let _ = tx.send(Verdict {
                identity,
                down,
                reason,
            });
        });
    }

    /// Applies the fleet's reports about the upstream `identity` to every
    /// member with that identity (see pool/health/fleet.rs for the rules).
    pub fn fleet_apply(
        &self,
        identity: &str,
        down: &[(String, String)],
        quorum: usize,
        fresh: bool,
    ) {
        let all = self.members();
        for m in all
            .iter()
            .filter(|m| identity_of(m).as_deref() == Some(identity))
        {
            let report = super::outcome::FleetReport {
                down: down.to_vec(),
                quorum,
                fresh,
            };
            self.report(m, super::Outcome::Fleet(report));
        }
    }
}

fn identity_of(m: &Member) -> Option<String> {
    identity(m.spec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::{BreakerConfig, PoolConfig};
    use crate::config::{Applies, UpstreamEntry};
    use std::time::Duration;

    fn entry(name: &str, url: &str, priority: i32) -> UpstreamEntry {
        UpstreamEntry {
            spec: UpstreamSpec::parse(name, url).expect("url"),
            zone: None,
            priority,
            weight: 1,
            max_fails: 1,
            fail_timeout: Duration::from_secs(10),
            applies: Applies::ALL,
            origin: "config".into(),
        }
    }

    #[test]
    fn identity_is_the_same_across_names_and_credentials_and_holds_none() {
        let a = UpstreamSpec::parse("a", "http://alice:s3cret@10.0.0.1:3128").unwrap();
        let b = UpstreamSpec::parse("b", "http://10.0.0.1:3128").unwrap();
        assert_eq!(identity(&a), identity(&b));
        assert_eq!(identity(&a).as_deref(), Some("http://10.0.0.1:3128"));
        assert_eq!(identity(&UpstreamSpec::direct("d")), None);
    }

    #[test]
    fn reports_reach_members_added_later_but_do_not_undo_an_override() {
        let pool = Pool::new(
            vec![entry("u1", "http://127.0.0.1:1", 0)],
            PoolConfig::default(),
            BreakerConfig::default(),
        );
        let down = vec![("g2".to_string(), "timeout".to_string())];
        let id = "http://127.0.0.1:1";
        pool.fleet_apply(id, &down, 1, true);
        let m = pool.members()[0].clone();
        assert_eq!(m.health.ejection_reason(), Some("fleet"));
        pool.report(&m, crate::pool::Outcome::Served(Duration::from_millis(1)));
        assert!(m.health.eligible(), "own success overrides");
        // A reload adds a member for the same proxy (another priority).
        pool.replace(
            vec![
                entry("u1", "http://127.0.0.1:1", 0),
                entry("u1b", "http://127.0.0.1:1", 5),
            ],
            PoolConfig::default(),
            BreakerConfig::default(),
        );
        pool.fleet_apply(id, &down, 1, false);
        let ms = pool.members();
        assert!(ms[0].health.eligible(), "the override stands");
        assert_eq!(
            ms[1].health.ejection_reason(),
            Some("fleet"),
            "the new member learns"
        );
    }
}
