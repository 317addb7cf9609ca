//! Publishes this gateway's verdicts (pool/fleet.rs hands them over) under
//! one lease of `ttl`, kept alive while the gateway runs. After losing etcd
//! it reconnects with backoff, keeps its lease if etcd still has it (else
//! takes a new one) and writes every current verdict again. On shutdown it
//! revokes the lease (serve's stop awaits this task), so its reports vanish
//! at once.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, LeaseKeepAliveStream, LeaseKeeper, PutOptions};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{backoff, call, connect, now_ms, report_key, FleetError, Report};
use crate::config::fleet::FleetSettings;
use crate::pool::fleet::Verdict;
use crate::shutdown::Shutdown;

/// A connected client with a live lease.
struct Session {
    client: Client,
    lease: i64,
    keeper: LeaseKeeper,
    acks: LeaseKeepAliveStream,
}

impl Session {
    /// Connects and takes a lease: `reuse` if etcd still holds it, else new.
    async fn open(s: &FleetSettings, reuse: Option<i64>) -> Result<Session, FleetError> {
        let mut client = connect(s).await?;
        if let Some(id) = reuse {
            if let Ok(mut sess) = Self::with_lease(client.clone(), id).await {
                if sess.refresh().await.is_ok() {
                    return Ok(sess);
                }
            }
        }
        let ttl = s.ttl.as_secs() as i64;
        let lease = call("lease grant", client.lease_grant(ttl, None))
            .await?
            .id();
        let mut sess = Self::with_lease(client, lease).await?;
        sess.refresh().await?;
        Ok(sess)
    }

    async fn with_lease(mut client: Client, lease: i64) -> Result<Session, FleetError> {
        let (keeper, acks) = call("lease keep-alive", client.lease_keep_alive(lease)).await?;
        Ok(Session {
            client,
            lease,
            keeper,
            acks,
        })
    }

    /// One keep-alive round trip; an error when the lease is gone.
    async fn refresh(&mut self) -> Result<(), FleetError> {
        call("lease keep-alive", self.keeper.keep_alive()).await?;
        match call("lease keep-alive", self.acks.message()).await? {
            Some(r) if r.ttl() > 0 => Ok(()),
            Some(_) => Err(FleetError::LeaseExpired(self.lease)),
            None => Err(FleetError::WatchEnded("keep-alive stream closed")),
        }
    }

    async fn put(&mut self, s: &FleetSettings, v: &Verdict) -> Result<(), FleetError> {
        let report = Report {
            state: if v.down { "down" } else { "up" }.into(),
            reason: v.reason.into(),
            gateway: s.id.clone(),
            upstream: v.identity.clone(),
            time_ms: now_ms(),
        };
        let value = serde_json::to_string(&report).unwrap_or_default();
        let key = report_key(&s.prefix, &v.identity, &s.id);
        let opts = PutOptions::new().with_lease(self.lease);
        call("put", self.client.put(key, value, Some(opts))).await?;
        metrics::counter!("proxyguard_fleet_published_total", "state" => report.state.clone())
            .increment(1);
        tracing::info!(upstream = %v.identity, state = %report.state, reason = v.reason, "fleet: published verdict");
        Ok(())
    }

    async fn revoke(mut self) {
        let _ = call("lease revoke", self.client.lease_revoke(self.lease)).await;
    }
}

/// The publisher task.
pub async fn run(s: FleetSettings, mut rx: UnboundedReceiver<Verdict>, shutdown: Shutdown) {
    // The current verdict per upstream identity: what etcd should hold.
    let mut current: BTreeMap<String, Verdict> = BTreeMap::new();
    let mut session: Option<Session> = None;
    let mut last_lease = None;
    let mut round = 0u32;
    let mut refresh = tokio::time::interval((s.ttl / 3).max(Duration::from_millis(500)));
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let Some(sess) = session.as_mut() else {
            match open_and_replay(&s, last_lease, &current).await {
                Ok(sess) => {
                    last_lease = Some(sess.lease);
                    session = Some(sess);
                    round = 0;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fleet: cannot publish verdicts; retrying");
                    // Keep taking verdicts while waiting: the latest is replayed.
                    let wait = backoff(round, &shutdown);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            go_on = &mut wait => if go_on { break } else { return },
                            v = rx.recv() => match v {
                                Some(v) => { current.insert(v.identity.clone(), v); }
                                None => return,
                            },
                        }
                    }
                    round = round.saturating_add(1);
                }
            }
            continue;
        };
        let outcome = tokio::select! {
            v = rx.recv() => match v {
                Some(v) => {
                    current.insert(v.identity.clone(), v.clone());
                    sess.put(&s, &v).await
                }
                None => return,
            },
            _ = refresh.tick() => sess.refresh().await,
            _ = shutdown.triggered() => {
                if let Some(sess) = session.take() {
                    sess.revoke().await;
                }
                return;
            }
        };
        if let Err(e) = outcome {
            tracing::warn!(error = %e, "fleet: lost etcd while publishing; reconnecting");
            if matches!(e, FleetError::LeaseExpired(_)) {
                last_lease = None;
            }
            session = None;
        }
    }
}

/// Opens a session and writes every current verdict again.
async fn open_and_replay(
    s: &FleetSettings,
    reuse: Option<i64>,
    current: &BTreeMap<String, Verdict>,
) -> Result<Session, FleetError> {
    let mut sess = Session::open(s, reuse).await?;
    for v in current.values() {
        sess.put(s, v).await?;
    }
    Ok(sess)
}
