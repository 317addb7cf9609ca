//! The pool's side of fleet health (src/fleet/ talks to etcd): verdicts
//! this gateway publishes, and the fleet's reports applied to members.

use std::sync::atomic::Ordering;

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
        let cfg = self.cfg.load();
        let all = self.members();
        for m in all
            .iter()
            .filter(|m| identity_of(m).as_deref() == Some(identity))
        {
            let t = {
                let _one_at_a_time = self.ejecting.lock().unwrap_or_else(|e| e.into_inner());
                let ejected = all.iter().filter(|x| x.health.is_ejected()).count();
                let cap = (all.len() * cfg.max_ejection_percent as usize) / 100;
                let may_eject = ejected < cap.max(if cfg.max_ejection_percent > 0 { 1 } else { 0 });
                m.health.fleet_view(down.to_vec(), quorum, fresh, may_eject)
            };
            metrics::gauge!("proxyguard_fleet_reports", "upstream" => m.name().to_string())
                .set(down.len() as f64);
            if t.iter()
                .any(|t| matches!(t, super::Transition::Ejected { .. }))
            {
                self.stats.ejections.fetch_add(1, Ordering::Relaxed);
            }
            self.transitions(m, t);
        }
    }
}

fn identity_of(m: &Member) -> Option<String> {
    identity(m.spec())
}
