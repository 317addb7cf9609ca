//! Discovery: upstream sets learnt at run time (`[[discovery]]`: DNS, etcd,
//! files), merged into the one pool beside the static `[[upstream]]`s.
//!
//! Every source runs as its own task and reports whole rounds to a
//! [`Sink`], which bounds them, keeps the last good set when a source fails
//! or returns garbage (a discovery outage never empties the pool), raises
//! events and metrics, and hands the set to [`Pool::set_source`]. The pool
//! composes static and discovered entries through [`Sets`] and replaces its
//! members by the same identity rule as a reload: an unchanged entry keeps
//! its member (and health), a removed one drains.
//!
//! [`Pool::set_source`]: crate::pool::Pool::set_source

pub mod dns;
pub mod etcd;
pub mod file;
mod sink;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use serde::Serialize;

use crate::config::discovery::{Source, SourceSpec};
use crate::config::{Config, UpstreamEntry};
use crate::route::Router;
use crate::shutdown::Shutdown;

pub use sink::Sink;

/// A running discovery source.
pub trait Discover: Send {
    /// Runs until `shutdown`, reporting every round (a whole set, or a
    /// failure) to `sink`.
    fn run(self: Box<Self>, sink: Sink, shutdown: Shutdown) -> BoxFuture<'static, ()>;
}

/// Where a pool entry came from, as `/status` shows it: `config`, `dns`,
/// `etcd`, `file`, `env` (zero-config proxy variables) or `route`.
pub fn source_of(origin: &str) -> &'static str {
    match origin {
        "config" => "config",
        "dns" => "dns",
        "etcd" => "etcd",
        "file" => "file",
        "route" => "route",
        _ => "env",
    }
}

/// One source as `/status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStatus {
    /// `dns:NAME`, `etcd:PREFIX` or `file:GLOB`.
    pub id: String,
    /// `dns`, `etcd` or `file`.
    pub kind: &'static str,
    /// Upstreams it contributes now (its last good set).
    pub members: usize,
    /// False while the source fails (its last good set is kept).
    pub ok: bool,
    /// Unix ms of the last change of its set.
    pub updated_ms: Option<u64>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Contribution {
    status: SourceStatus,
    entries: Vec<UpstreamEntry>,
}

/// The static entries and each source's last good set; composes them into
/// the pool's member list (static first, then sources in config order; a
/// name already taken is skipped).
#[derive(Debug, Default)]
pub struct Sets {
    inner: Mutex<(Vec<UpstreamEntry>, Vec<Contribution>)>,
}

fn compose(config: &[UpstreamEntry], sources: &[Contribution]) -> Vec<UpstreamEntry> {
    let mut out: Vec<UpstreamEntry> = config.to_vec();
    for c in sources {
        for e in &c.entries {
            if out.iter().any(|o| o.spec.name == e.spec.name) {
                tracing::warn!(source = %c.status.id, upstream = %e.spec.name, "discovered upstream skipped: the name is already taken");
                continue;
            }
            out.push(e.clone());
        }
    }
    out
}

impl Sets {
    pub fn new(config: Vec<UpstreamEntry>) -> Self {
        Sets {
            inner: Mutex::new((config, Vec::new())),
        }
    }

    /// Replaces the static entries, then hands the composed list to `store`
    /// (under the lock, so concurrent updates apply in order).
    pub fn set_config(&self, config: Vec<UpstreamEntry>, store: impl FnOnce(Vec<UpstreamEntry>)) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = config;
        store(compose(&g.0, &g.1));
    }

    /// Replaces one source's set (registering the source on first use),
    /// then hands the composed list to `store`.
    pub fn set_source(
        &self,
        id: &str,
        kind: &'static str,
        entries: Vec<UpstreamEntry>,
        store: impl FnOnce(Vec<UpstreamEntry>),
    ) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let c = Self::slot(&mut g.1, id, kind);
        c.status.members = entries.len();
        c.status.updated_ms = Some(unix_ms());
        c.entries = entries;
        store(compose(&g.0, &g.1));
    }

    /// Records a source's health for `/status` (no change to the pool).
    pub fn note(&self, id: &str, kind: &'static str, error: Option<String>) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let c = Self::slot(&mut g.1, id, kind);
        c.status.ok = error.is_none();
        if error.is_some() {
            c.status.last_error = error;
        }
    }

    fn slot<'a>(
        v: &'a mut Vec<Contribution>,
        id: &str,
        kind: &'static str,
    ) -> &'a mut Contribution {
        let i = match v.iter().position(|c| c.status.id == id) {
            Some(i) => i,
            None => {
                v.push(Contribution {
                    status: SourceStatus {
                        id: id.to_string(),
                        kind,
                        members: 0,
                        ok: true,
                        updated_ms: None,
                        last_error: None,
                    },
                    entries: Vec::new(),
                });
                v.len() - 1
            }
        };
        &mut v[i]
    }

    /// Every source's status, in config order.
    pub fn status(&self) -> Vec<SourceStatus> {
        let g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.1.iter().map(|c| c.status.clone()).collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn build(source: &Source) -> Result<Box<dyn Discover>, String> {
    Ok(match &source.spec {
        SourceSpec::Dns(d) => Box::new(dns::Dns::new(d.clone())?),
        SourceSpec::Etcd(e) => Box::new(etcd::Etcd::new(e.clone())),
        SourceSpec::File(f) => Box::new(file::Files::new(f.clone())),
    })
}

/// Longest `serve` waits at start for every source's first round, so the
/// first clients already see discovered upstreams.
pub const FIRST_ROUND_WAIT: Duration = Duration::from_secs(5);

/// Starts every `[[discovery]]` source of `cfg`; returns once each has
/// reported its first round (or after [`FIRST_ROUND_WAIT`]).
pub async fn start(cfg: &Config, router: Arc<Router>, shutdown: Shutdown) {
    let own: Vec<std::net::SocketAddr> = cfg.listeners.iter().map(|l| l.addr).collect();
    let mut first = Vec::new();
    // Listed in config order, whichever answers first.
    for s in &cfg.discovery {
        router.pool.note_source(&s.id, s.kind().as_str(), None);
    }
    for s in &cfg.discovery {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sink = Sink::new(s, router.clone(), own.clone(), tx);
        match build(s) {
            Ok(d) => {
                tracing::info!(source = %s.id, "discovery started");
                tokio::spawn(d.run(sink, shutdown.clone()));
                first.push(rx);
            }
            Err(e) => {
                let mut sink = sink;
                sink.report(None, vec![format!("cannot start: {e}")]);
            }
        }
    }
    if first.is_empty() {
        return;
    }
    let all = futures_util::future::join_all(first);
    if tokio::time::timeout(FIRST_ROUND_WAIT, all).await.is_err() {
        tracing::warn!(
            "discovery: not every source answered within {FIRST_ROUND_WAIT:?}; serving with what is known"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamSpec;

    fn e(name: &str, origin: &str) -> UpstreamEntry {
        UpstreamEntry::with_defaults(
            UpstreamSpec::parse(name, "http://127.0.0.1:1").unwrap(),
            origin,
        )
    }

    fn names(v: &[UpstreamEntry]) -> Vec<String> {
        v.iter().map(|e| e.spec.name.clone()).collect()
    }

    #[test]
    fn static_first_then_sources_in_order_names_unique() {
        let sets = Sets::new(vec![e("a", "config")]);
        let mut got = Vec::new();
        sets.set_source(
            "file:x",
            "file",
            vec![e("file:b", "file"), e("a", "file")],
            |v| got = v,
        );
        assert_eq!(names(&got), ["a", "file:b"]);
        sets.set_source("dns:y", "dns", vec![e("dns:c", "dns")], |v| got = v);
        assert_eq!(names(&got), ["a", "file:b", "dns:c"]);
        // A reload replaces the static part and keeps the discovered ones.
        sets.set_config(vec![e("z", "config")], |v| got = v);
        assert_eq!(names(&got), ["z", "file:b", "a", "dns:c"]);
        sets.set_source("file:x", "file", Vec::new(), |v| got = v);
        assert_eq!(names(&got), ["z", "dns:c"]);
        sets.note("dns:y", "dns", Some("boom".into()));
        let st = sets.status();
        assert_eq!(
            (st[0].id.as_str(), st[0].members, st[0].ok),
            ("file:x", 0, true)
        );
        assert_eq!(
            (st[1].ok, st[1].last_error.as_deref()),
            (false, Some("boom"))
        );
        assert_eq!(source_of("HTTPS_PROXY"), "env");
        assert_eq!(source_of("etcd"), "etcd");
    }
}
