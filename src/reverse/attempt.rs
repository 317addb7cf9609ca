//! Trying backends, on the shared plumbing: candidates in zone order (the
//! pool's `by_zone` strategy), connections through the pool's attempt
//! engine (breaker admission, racing after `race_after`, backoff between
//! rounds, one deadline), and every outcome reported through `Pool::report`.
//!
//! A backend is tried at most once per request. What may be sent again
//! after a failed exchange is the caller's rule (http.rs, grpc.rs).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::HeaderValue;
use http::Response;
use hyper::body::Incoming;

use super::backend::AttemptError;
use super::{ReqBody, ReverseRoute};
use crate::http_client::Sender;
use crate::pool::{attempt, Member, Outcome};
use crate::upstream::{ConnectError, FaultClass};

/// The backends of one request: zone order, and those already tried.
pub(super) struct BackendPlan {
    order: Vec<Arc<Member>>,
    /// Every backend dialled or sent to (a mutex: the engine's connector
    /// notes them while its futures run).
    tried: Mutex<Vec<Arc<Member>>>,
    max: usize,
}

impl BackendPlan {
    fn tried(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Member>>> {
        self.tried.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, m: &Arc<Member>) {
        let mut t = self.tried();
        if !t.iter().any(|x| Arc::ptr_eq(x, m)) {
            t.push(m.clone());
        }
    }

    /// Candidates not tried yet, in order.
    fn untried(&self) -> Vec<Arc<Member>> {
        let t = self.tried();
        self.order
            .iter()
            .filter(|m| !t.iter().any(|x| Arc::ptr_eq(x, m)))
            .cloned()
            .collect()
    }

    fn attempts_left(&self) -> usize {
        self.max.saturating_sub(self.tried().len())
    }

    /// Whether a failed answer may still go to another backend.
    pub fn another_left(&self) -> bool {
        self.attempts_left() > 0 && !self.untried().is_empty()
    }
}

/// How to open a connection to a backend.
#[derive(Clone, Copy)]
pub(super) enum Dial {
    /// For a request: a shared or idle one of the first candidate, else new.
    Request,
    /// A new HTTP/1.1 connection that may be upgraded (never pooled).
    Upgrade,
}

/// A connection to one backend, ready for one request.
pub(super) struct BackendConn {
    pub tx: Sender<ReqBody>,
    /// Reused (idle or shared): the engine reported nothing for it.
    pub reused: bool,
    pub m: Arc<Member>,
}

/// A connection failure to a backend is the backend's fault (passive
/// health): a direct connection's error is marked as the member's, and a
/// backend the forward pool could not reach (`via = "pool"`) is down.
pub(super) fn as_backend_fault(e: ConnectError) -> ConnectError {
    match e {
        ConnectError::Refused { addr, .. } => ConnectError::Refused { addr, proxy: true },
        ConnectError::Timeout { phase, after, .. } => ConnectError::timeout(phase, after, true),
        ConnectError::Reset { phase, .. } => ConnectError::Reset { phase, proxy: true },
        ConnectError::Unreachable { addr, detail, .. } => ConnectError::Unreachable {
            addr,
            detail,
            proxy: true,
        },
        ConnectError::Io { phase, detail, .. } => ConnectError::Io {
            phase,
            detail,
            proxy: true,
        },
        ConnectError::Dns { host, detail, .. } => ConnectError::Dns {
            host,
            detail,
            proxy: true,
        },
        ConnectError::Tls {
            kind,
            server,
            detail,
            ..
        } => ConnectError::Tls {
            kind,
            server,
            detail,
            proxy: true,
        },
        e if e.fault() == FaultClass::Target => ConnectError::ProxyStatus {
            status: 502,
            reason: format!("backend unreachable through the pool: {e}"),
        },
        other => other,
    }
}

impl ReverseRoute {
    /// This request's backends in zone order: local zone first (rotating),
    /// local ones at `max_inflight`, or that cut a response body within
    /// their `fail_timeout`, behind the others.
    pub(super) fn plan(&self) -> BackendPlan {
        let busy = |m: &Member| {
            let b = self.proto(m);
            let full = self.cfg.max_inflight > 0
                && b.inflight.load(std::sync::atomic::Ordering::Relaxed) >= self.cfg.max_inflight;
            full || b.cut.recent()
        };
        BackendPlan {
            order: self.pool.plan_by_zone(self.cfg.local_zone.as_deref(), busy),
            tried: Mutex::new(Vec::new()),
            max: self.cfg.max_attempts.max(1) as usize,
        }
    }

    /// A connection to the next untried backend: a reusable one of the
    /// first candidate, else a new one through the attempt engine within
    /// `within`. None when nothing is left to try, or nothing could be
    /// reached (why goes to `last_err`).
    pub(super) async fn connect_next(
        &self,
        plan: &BackendPlan,
        within: Duration,
        dial: Dial,
        last_err: &mut Option<String>,
    ) -> Option<BackendConn> {
        let cands = plan.untried();
        let attempts = plan.attempts_left();
        let first = cands.first().filter(|_| attempts > 0)?;
        if let (Dial::Request, Some(tx)) = (dial, self.reusable(first, false)) {
            plan.note(first);
            let m = first.clone();
            return Some(BackendConn {
                tx,
                reused: true,
                m,
            });
        }
        let mut budget = self.pool.budget();
        budget.deadline = budget.deadline.min(within);
        budget.max_attempts = attempts;
        let connect = |m: Arc<Member>| {
            plan.note(&m);
            async move {
                let r = match dial {
                    Dial::Request => self.dial(&m, false).await,
                    Dial::Upgrade => self.upgrade_sender(&m).await,
                };
                r.map_err(as_backend_fault)
            }
        };
        match attempt::connect(&self.pool, &cands, None, budget, connect).await {
            Ok((tx, m)) => Some(BackendConn {
                tx,
                reused: false,
                m,
            }),
            Err(e) => {
                *last_err = Some(format!("no backend could be reached: {e}"));
                None
            }
        }
    }

    /// One exchange on `c` with a response head due within `left`. A
    /// success is reported here for a reused connection (the engine
    /// reported a new one); a failure is left to [`ReverseRoute::failed`].
    pub(super) async fn exchange_within(
        &self,
        c: BackendConn,
        parts: &http::request::Parts,
        client_host: Option<&HeaderValue>,
        body: &mut (dyn FnMut() -> Option<ReqBody> + Send),
        left: Duration,
    ) -> Result<Response<Incoming>, AttemptError> {
        let t0 = tokio::time::Instant::now();
        let m = c.m.clone();
        let sent = self.exchange(&m, c.tx, c.reused, parts, client_host, body);
        let resp = match tokio::time::timeout(left, sent).await {
            Ok(r) => r?,
            Err(_) => return Err(AttemptError::TimedOut(left)),
        };
        self.heads.record(t0.elapsed());
        if c.reused {
            self.pool.report(&m, Outcome::Served(t0.elapsed()));
        }
        Ok(resp)
    }

    /// Reports a failed exchange with `m` (the backend's fault) and says
    /// why, for the log and the fallback's `Proxy-Status`.
    pub(super) fn failed(&self, m: &Member, e: &AttemptError) -> String {
        let outcome = match e {
            AttemptError::Connect(ce) => Outcome::of_error(as_backend_fault(ce.clone())),
            AttemptError::Sent(_) => Outcome::broke_before_answer(),
            AttemptError::TimedOut(after) => Outcome::no_answer_within(*after),
        };
        self.pool.report(m, outcome);
        format!("{}: {e}", m.name())
    }

    /// Reports a 502–504 (or gRPC UNAVAILABLE) that goes to another backend.
    pub(super) fn refused_answer(&self, m: &Member, status: u16, reason: &str) {
        let e = ConnectError::ProxyStatus {
            status,
            reason: reason.into(),
        };
        self.pool.report(m, Outcome::UpstreamFault(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Phase, TargetFault};

    #[test]
    fn a_backend_that_cannot_be_reached_is_at_fault_and_our_limits_are_not() {
        let direct = ConnectError::Refused {
            addr: "127.0.0.1:1".into(),
            proxy: false,
        };
        assert_eq!(
            direct.fault(),
            FaultClass::Target,
            "as the connector sees it"
        );
        assert_eq!(as_backend_fault(direct).fault(), FaultClass::Upstream);
        let tls = ConnectError::timeout(Phase::Tls, Duration::from_secs(1), false);
        assert_eq!(as_backend_fault(tls).fault(), FaultClass::Upstream);
        // Through the forward pool: the proxy worked, the backend did not.
        let via_pool = ConnectError::TargetFailed {
            status: 502,
            reason: "Unable to connect".into(),
            kind: TargetFault::Refused,
            next_hop: Some("corp".into()),
        };
        let e = as_backend_fault(via_pool);
        assert_eq!(e.fault(), FaultClass::Upstream);
        assert!(!e.needs_second_opinion());
        let ours = ConnectError::NoRoute("every upstream's circuit breaker is open".into());
        assert_eq!(as_backend_fault(ours).fault(), FaultClass::Local);
    }
}
