//! Fleet health inside the one health model: when `quorum` other gateways
//! report an upstream down, it is ejected here too, with reason `fleet`.
//!
//! - The ejection starts when the reports reach the quorum, or when a fresh
//!   down report arrives while they are at it.
//! - It ends when the reports fall below the quorum (gateways report it up,
//!   their leases expire, or etcd is lost), or on this gateway's own
//!   evidence: a successful connection, or a passing health check (a
//!   shallow check only vouches for connection-level reasons). A later
//!   fresh down report ejects it again.
//! - What this gateway publishes is its *own* verdict only (never the fleet
//!   ejection, so reports cannot feed on each other): down when its own
//!   state takes the upstream out of service, up again only on evidence
//!   (a success or passing check), not when an ejection merely expires.

use super::*;

/// Reasons a plain TCP (+ greeting) probe would see as well.
fn connection_level_reason(r: &str) -> bool {
    matches!(
        r,
        "timeout" | "refused" | "reset" | "dns" | "error" | "check_failed"
    )
}

/// The fleet's view of one upstream, as this gateway holds it.
#[derive(Debug, Default)]
pub(super) struct Mark {
    /// Other gateways reporting the upstream down: (gateway id, reason).
    down: Vec<(String, String)>,
    ejected: bool,
    /// Every report's reason is connection-level: a shallow check vouches.
    shallow_ok: bool,
}

impl Mark {
    pub(super) fn ejected(&self) -> bool {
        self.ejected
    }

    /// Lifts the fleet ejection on this gateway's own evidence; `deep` false
    /// for a shallow check. True when it was lifted.
    pub(super) fn lift(&mut self, deep: bool) -> bool {
        if self.ejected && (deep || self.shallow_ok) {
            self.ejected = false;
            return true;
        }
        false
    }
}

/// What this gateway last published about an upstream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) enum Published {
    #[default]
    Nothing,
    Down,
    Up,
}

/// This gateway's own verdict on an upstream, fleet reports left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnVerdict {
    pub usable: bool,
    /// Why it is out (`timeout`, `refused`, `auth`, `check_failed`, ...).
    pub reason: &'static str,
    /// A success or passing check came after the last failure.
    pub evidence: bool,
}

impl Health {
    /// Applies the fleet's reports: `down` = the other gateways that report
    /// the upstream down; `fresh` = one of them is new since the last call.
    /// `may_eject` is false when the pool's ejection cap is reached.
    pub(in crate::pool) fn fleet_view(
        &self,
        mut down: Vec<(String, String)>,
        quorum: usize,
        fresh: bool,
        may_eject: bool,
    ) -> Vec<Transition> {
        down.sort();
        let mut g = self.lock();
        let mut t = std::mem::take(&mut g.pending);
        self.tick(&mut g, Instant::now(), &mut t);
        let quorum = quorum.max(1);
        let was_reached = g.fleet.down.len() >= quorum;
        let reached = down.len() >= quorum;
        let mut newly = false;
        if reached && !g.fleet.ejected && (fresh || !was_reached) && may_eject {
            g.fleet.ejected = true;
            g.fleet.shallow_ok = down.iter().all(|(_, r)| connection_level_reason(r));
            newly = true;
            t.push(Transition::Ejected {
                until_ms: 0,
                reason: "fleet".into(),
            });
        } else if !reached && g.fleet.ejected {
            g.fleet.ejected = false;
            t.push(Transition::Reinstated);
        }
        g.fleet.down = down;
        drop(g);
        if newly {
            self.ejected.notify_waiters();
        }
        t
    }

    /// The other gateways reporting this upstream down: (gateway id, reason).
    pub fn fleet_down(&self) -> Vec<(String, String)> {
        self.lock().fleet.down.clone()
    }

    /// Why the upstream is ejected: its own reason, or `fleet`.
    pub fn ejection_reason(&self) -> Option<&'static str> {
        let g = self.lock();
        match Self::own_state_of(&g) {
            State::Ejected => Some(g.trip_reason),
            State::Healthy | State::HalfOpen if g.fleet.ejected => Some("fleet"),
            _ => None,
        }
    }

    /// This gateway's own verdict, fleet reports left out.
    pub fn own_verdict(&self) -> OwnVerdict {
        let mut g = self.lock();
        let mut t = Vec::new();
        self.tick(&mut g, Instant::now(), &mut t);
        g.pending.extend(t);
        let own = Self::own_state_of(&g);
        OwnVerdict {
            usable: matches!(own, State::Healthy | State::HalfOpen),
            reason: if own == State::Down {
                "check_failed"
            } else {
                g.trip_reason
            },
            evidence: g.good_since_fail,
        }
    }

    /// Publishes this gateway's own verdict when it changed: `send(down,
    /// reason)` runs under the publish lock, so verdicts go out in order.
    /// Down when it is out of service by this gateway's own view; up again
    /// only after a down, and only on evidence.
    pub(in crate::pool) fn fleet_publish(&self, send: impl FnOnce(bool, &'static str)) {
        let mut p = self.published.lock().unwrap_or_else(|e| e.into_inner());
        let v = self.own_verdict();
        if !v.usable && *p != Published::Down {
            send(true, v.reason);
            *p = Published::Down;
        } else if v.usable && v.evidence && *p == Published::Down {
            send(false, "ok");
            *p = Published::Up;
        }
    }
}
