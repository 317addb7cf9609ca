//! Fleet health through etcd (`[fleet]`, docs/fleet.md): each
//! gateway publishes its own verdicts on its upstreams (publish.rs) and
//! watches everyone's (watch.rs); the pool turns a quorum of down reports
//! into an ejection with reason `fleet` (pool/health/fleet.rs).
//!
//! A report lives at `<prefix><upstream identity>/<gateway id>`, the
//! identity being `scheme://host:port` percent-encoded (no credentials ever),
//! under the gateway's lease of `ttl`; its value is a JSON [`Report`].
//! Losing etcd costs nothing but this extra signal.

pub mod publish;
pub mod watch;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use serde::{Deserialize, Serialize};

use crate::config::fleet::FleetSettings;
use crate::route::Router;
use crate::shutdown::Shutdown;

/// Longest wait for one etcd request (a dead etcd must not stall a task).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Why talking to etcd failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd {op} failed: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {op}: no answer within {after:?}")]
    Timeout { op: &'static str, after: Duration },
    #[error("etcd watch ended ({0})")]
    WatchEnded(&'static str),
    #[error("etcd lease {0:x} expired")]
    LeaseExpired(i64),
}

/// One report, the value under a report key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `down` or `up`.
    pub state: String,
    /// Reason label of a down report (`timeout`, `refused`, `auth`, ...), `ok` when up.
    pub reason: String,
    pub gateway: String,
    /// The upstream identity (`scheme://host:port`).
    pub upstream: String,
    /// Unix milliseconds when the verdict was reached.
    pub time_ms: u64,
}

impl Report {
    pub fn is_down(&self) -> bool {
        self.state == "down"
    }
}

/// Characters escaped in the identity segment of a key: '/' separates
/// segments, '%' is the escape itself.
const KEY_SEGMENT: &AsciiSet = &CONTROLS.add(b'/').add(b'%').add(b' ');

/// `<prefix><identity, escaped>/<gateway>`.
pub fn report_key(prefix: &str, identity: &str, gateway: &str) -> String {
    format!(
        "{prefix}{}/{gateway}",
        utf8_percent_encode(identity, KEY_SEGMENT)
    )
}

/// (identity, gateway) of a report key under `prefix`.
pub fn parse_key(prefix: &str, key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix(prefix)?;
    let (ident, gateway) = rest.rsplit_once('/')?;
    if ident.is_empty() || gateway.is_empty() || ident.contains('/') {
        return None;
    }
    let ident = percent_decode_str(ident).decode_utf8().ok()?.into_owned();
    Some((ident, gateway.to_string()))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A client for `s.endpoints` (connects lazily: errors show on first use).
async fn connect(s: &FleetSettings) -> Result<etcd_client::Client, FleetError> {
    let opts = etcd_client::ConnectOptions::new()
        .with_connect_timeout(CALL_TIMEOUT)
        // HTTP/2 pings notice a silently dead etcd. etcd answers pings more
        // frequent than every 5 s (its default --grpc-keepalive-min-time)
        // with GOAWAY "too many pings", so every 10 s, 5 s to answer.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    call(
        "connect",
        etcd_client::Client::connect(&s.endpoints, Some(opts)),
    )
    .await
}

/// Runs one etcd request with [`CALL_TIMEOUT`].
async fn call<T>(
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, FleetError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(FleetError::Etcd { op, source }),
        Err(_) => Err(FleetError::Timeout {
            op,
            after: CALL_TIMEOUT,
        }),
    }
}

/// Waits the backoff before reconnect attempt `round` (full jitter between
/// 100 ms and 5 s); false when shutdown came first.
async fn backoff(round: u32, shutdown: &Shutdown) -> bool {
    let d = Duration::from_millis(100)
        + crate::pool::backoff::full_jitter(
            round,
            Duration::from_millis(200),
            Duration::from_secs(5),
        );
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = shutdown.triggered() => false,
    }
}

/// Starts publishing this gateway's verdicts and watching the fleet's.
/// The publisher's handle: awaited at shutdown, so it can revoke its lease.
pub fn spawn(
    s: FleetSettings,
    router: Arc<Router>,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    router.pool.set_fleet_sink(tx);
    metrics::gauge!("proxyguard_fleet_connected").set(0.0);
    tracing::info!(
        id = %s.id,
        prefix = %s.prefix,
        quorum = s.quorum,
        ttl = ?s.ttl,
        "fleet health: publishing and watching through etcd"
    );
    tokio::spawn(watch::run(s.clone(), router, shutdown.clone()));
    tokio::spawn(publish::run(s, rx, shutdown))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_never_hold_slashes_in_the_identity() {
        let k = report_key("/pg/fleet/", "http://127.0.0.1:3128", "gw-1");
        assert_eq!(k, "/pg/fleet/http:%2F%2F127.0.0.1:3128/gw-1");
        assert_eq!(
            parse_key("/pg/fleet/", &k),
            Some(("http://127.0.0.1:3128".into(), "gw-1".into()))
        );
        let v6 = report_key("/p/", "socks5://[::1]:1080", "h");
        assert_eq!(
            parse_key("/p/", &v6),
            Some(("socks5://[::1]:1080".into(), "h".into()))
        );
        assert_eq!(parse_key("/p/", "/other/x/h"), None);
        assert_eq!(parse_key("/p/", "/p/no-gateway"), None);
        assert_eq!(parse_key("/p/", "/p/a/b/c"), None);
    }
}
