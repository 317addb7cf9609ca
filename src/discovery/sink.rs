//! Where a discovery source reports its rounds: bounds the set, keeps the
//! last good one when the source fails or returns garbage, and raises the
//! events and metrics. Only a set that differs from the last one touches
//! the pool.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::discovery::{Source, MAX_MEMBERS};
use crate::config::UpstreamEntry;
use crate::route::Router;
use crate::upstream::Host;

/// While a source keeps failing with new messages, at most one
/// `discovery_error` event per this period (each message is still logged).
const EVENT_EVERY: Duration = Duration::from_secs(10);
/// Errors of one round kept (a file or etcd prefix full of garbage).
const MAX_ERRORS: usize = 16;

pub struct Sink {
    id: String,
    kind: &'static str,
    router: Arc<Router>,
    own: Vec<SocketAddr>,
    /// The set last handed to the pool (None before the first good round).
    last: Option<Vec<UpstreamEntry>>,
    errors: Vec<String>,
    last_event: Option<Instant>,
    first: Option<tokio::sync::oneshot::Sender<()>>,
}

/// True when `e` points at one of proxyguard's own listeners (a loop).
fn loops_back(e: &UpstreamEntry, own: &[SocketAddr]) -> bool {
    let Host::Ip(ip) = &e.spec.host else {
        return false;
    };
    own.iter().any(|l| {
        l.port() == e.spec.port
            && (l.ip() == *ip
                || (l.ip().is_unspecified() && (ip.is_loopback() || ip.is_unspecified())))
    }) && !e.spec.is_direct()
}

fn names(v: &[UpstreamEntry]) -> Vec<&str> {
    v.iter().map(|e| e.spec.name.as_str()).collect()
}

/// Names listed in an event: the first few, then how many more.
const LISTED: usize = 10;

fn listed(v: &[&str]) -> String {
    let mut s = v[..v.len().min(LISTED)].join(", ");
    if v.len() > LISTED {
        s.push_str(&format!(" and {} more", v.len() - LISTED));
    }
    s
}

impl Sink {
    pub fn new(
        source: &Source,
        router: Arc<Router>,
        own: Vec<SocketAddr>,
        first: tokio::sync::oneshot::Sender<()>,
    ) -> Sink {
        metrics::gauge!("proxyguard_discovery_members", "source" => source.kind().as_str(), "id" => source.id.clone()).set(0.0);
        metrics::counter!("proxyguard_discovery_errors_total", "source" => source.kind().as_str(), "id" => source.id.clone()).increment(0);
        Sink {
            id: source.id.clone(),
            kind: source.kind().as_str(),
            router,
            own,
            last: None,
            errors: Vec::new(),
            last_event: None,
            first: Some(first),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// One round: `entries` is the whole set the source sees now (None when
    /// it could not be read at all); `errors` every problem seen in this
    /// round (a broken file, a garbage key), each naming where.
    pub fn report(&mut self, entries: Option<Vec<UpstreamEntry>>, mut errors: Vec<String>) {
        if let Some(mut set) = entries {
            let before = set.len();
            set.retain(|e| !loops_back(e, &self.own));
            if set.len() < before {
                errors.push(format!(
                    "{} upstream(s) point at proxyguard's own listener (a forwarding loop): ignored",
                    before - set.len()
                ));
            }
            if set.len() > MAX_MEMBERS {
                errors.push(format!(
                    "{} upstreams: only the first {MAX_MEMBERS} are used",
                    set.len()
                ));
                set.truncate(MAX_MEMBERS);
            }
            let kept = self.last.as_ref().map_or(0, Vec::len);
            if set.is_empty() && kept > 0 {
                errors.push(format!(
                    "the source returned no upstreams; keeping the last {kept}"
                ));
            } else if self.last.as_ref() != Some(&set) {
                self.publish(set);
            }
        }
        errors.truncate(MAX_ERRORS);
        self.errors_round(errors);
        if let Some(tx) = self.first.take() {
            let _ = tx.send(());
        }
    }

    fn publish(&mut self, set: Vec<UpstreamEntry>) {
        let old = self.last.take().unwrap_or_default();
        let added: Vec<&str> = names(&set)
            .into_iter()
            .filter(|n| !old.iter().any(|o| o.spec.name == *n))
            .collect();
        let removed: Vec<&str> = names(&old)
            .into_iter()
            .filter(|n| !set.iter().any(|s| s.spec.name == *n))
            .collect();
        let mut detail = format!("{}: {} upstreams", self.id, set.len());
        if !added.is_empty() {
            detail.push_str(&format!("; added {}", listed(&added)));
        }
        if !removed.is_empty() {
            detail.push_str(&format!("; removed {}", listed(&removed)));
        }
        if added.is_empty() && removed.is_empty() {
            detail.push_str("; settings changed");
        }
        tracing::info!(source = %self.id, upstreams = set.len(), added = %listed(&added), removed = %listed(&removed), "discovery: upstream set changed");
        let pool = &self.router.pool;
        pool.events.emit("discovery_update", None, detail);
        metrics::counter!("proxyguard_discovery_updates_total", "source" => self.kind, "id" => self.id.clone()).increment(1);
        metrics::gauge!("proxyguard_discovery_members", "source" => self.kind, "id" => self.id.clone()).set(set.len() as f64);
        pool.set_source(&self.id, self.kind, set.clone());
        self.last = Some(set);
    }

    fn errors_round(&mut self, errors: Vec<String>) {
        let kept = self.last.as_ref().map_or(0, Vec::len);
        let was_failing = !self.errors.is_empty();
        let fresh: Vec<&String> = errors.iter().filter(|e| !self.errors.contains(e)).collect();
        for e in &fresh {
            tracing::warn!(source = %self.id, error = %e, kept_upstreams = kept, "discovery error; keeping the last good set");
            metrics::counter!("proxyguard_discovery_errors_total", "source" => self.kind, "id" => self.id.clone()).increment(1);
        }
        let due = !was_failing || self.last_event.is_none_or(|t| t.elapsed() >= EVENT_EVERY);
        if let (Some(first), true) = (fresh.first(), due) {
            let more = if fresh.len() > 1 {
                format!(" (and {} more)", fresh.len() - 1)
            } else {
                String::new()
            };
            self.router.pool.events.emit(
                "discovery_error",
                None,
                format!(
                    "{}: {first}{more}; keeping the last {kept} upstreams",
                    self.id
                ),
            );
            self.last_event = Some(Instant::now());
        }
        if errors.is_empty() && was_failing {
            tracing::info!(source = %self.id, upstreams = kept, "discovery recovered");
            self.router.pool.events.emit(
                "discovery_recovered",
                None,
                format!("{}: answering again ({kept} upstreams)", self.id),
            );
        }
        self.router
            .pool
            .note_source(&self.id, self.kind, errors.first().cloned());
        self.errors = errors;
    }
}

/// `ip:port` as written in a URL (`[v6]:port`).
pub fn host_port(ip: IpAddr, port: u16) -> String {
    SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::UpstreamSpec;

    #[test]
    fn a_member_on_our_own_listener_is_a_loop() {
        let e =
            |url: &str| UpstreamEntry::with_defaults(UpstreamSpec::parse("x", url).unwrap(), "dns");
        let own = ["127.0.0.1:3128".parse().unwrap()];
        assert!(loops_back(&e("http://127.0.0.1:3128"), &own));
        assert!(!loops_back(&e("http://127.0.0.2:3128"), &own));
        assert!(!loops_back(&e("http://127.0.0.1:3129"), &own));
        let any = ["0.0.0.0:3128".parse().unwrap()];
        assert!(loops_back(&e("http://127.0.0.9:3128"), &any));
        assert_eq!(host_port("::1".parse().unwrap(), 80), "[::1]:80");
    }
}

#[cfg(test)]
mod round_tests {
    use super::*;
    use crate::config::discovery::{FileSpec, SourceSpec};
    use crate::config::Config;
    use crate::upstream::UpstreamSpec;

    fn entry(name: &str, port: u16) -> UpstreamEntry {
        let url = format!("http://127.0.0.1:{port}");
        UpstreamEntry::with_defaults(UpstreamSpec::parse(name, &url).unwrap(), "file")
    }

    fn kinds(r: &Router) -> Vec<&'static str> {
        r.pool.events.recent().iter().map(|e| e.kind).collect()
    }

    #[test]
    fn failures_and_empty_answers_keep_the_last_good_set() {
        let cfg = Config::from_toml(
            "[[listen]]\naddr = \"127.0.0.1:3128\"\n[[upstream]]\nname = \"s\"\nurl = \"http://127.0.0.1:9\"\n",
            "t",
        )
        .unwrap();
        let router = Arc::new(Router::new(&cfg));
        let source = Source {
            id: "file:/x/*".into(),
            spec: SourceSpec::File(FileSpec {
                pattern: "/x/*".into(),
                interval: Duration::from_secs(1),
            }),
        };
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let own = vec!["127.0.0.1:3128".parse().unwrap()];
        let mut sink = Sink::new(&source, router.clone(), own, tx);
        let names = || -> Vec<String> {
            router
                .pool
                .members()
                .iter()
                .map(|m| m.name().to_string())
                .collect()
        };
        sink.report(
            Some(vec![entry("file:a", 1), entry("file:b", 2)]),
            Vec::new(),
        );
        assert!(rx.try_recv().is_ok(), "first round not signalled");
        assert_eq!(names(), ["s", "file:a", "file:b"]);
        let a = router.pool.members()[1].clone();
        // Unchanged set: nothing replaced, no event.
        sink.report(
            Some(vec![entry("file:a", 1), entry("file:b", 2)]),
            Vec::new(),
        );
        assert!(Arc::ptr_eq(&a, &router.pool.members()[1]));
        assert_eq!(kinds(&router), ["discovery_update"]);
        // Failure, then an empty answer: kept, one event per new failure.
        sink.report(None, vec!["timed out".into()]);
        sink.report(None, vec!["timed out".into()]);
        sink.report(Some(Vec::new()), Vec::new());
        assert_eq!(names(), ["s", "file:a", "file:b"]);
        let st = &router.pool.discovery_status()[0];
        assert!(
            !st.ok && st.last_error.as_deref().unwrap().contains("no upstreams"),
            "{st:?}"
        );
        assert_eq!(kinds(&router), ["discovery_update", "discovery_error"]);
        // A partial update: b goes, a keeps its member; recovered.
        sink.report(Some(vec![entry("file:a", 1)]), Vec::new());
        assert_eq!(names(), ["s", "file:a"]);
        assert!(Arc::ptr_eq(&a, &router.pool.members()[1]));
        assert_eq!(
            kinds(&router),
            [
                "discovery_update",
                "discovery_error",
                "discovery_update",
                "discovery_recovered"
            ]
        );
        assert!(router.pool.discovery_status()[0].ok);
        // Loops and oversize answers are cut, with an error.
        let mut big: Vec<UpstreamEntry> = (0..300)
            .map(|i| entry(&format!("file:{i}"), 1000 + i))
            .collect();
        big.push(entry("file:me", 3128));
        sink.report(Some(big), Vec::new());
        assert_eq!(names().len(), 1 + MAX_MEMBERS);
        let recent = router.pool.events.recent();
        let update = &recent
            .iter()
            .rfind(|e| e.kind == "discovery_update")
            .unwrap()
            .detail;
        assert!(
            update.contains("and 246 more") && update.len() < 400,
            "{update}"
        );
        assert!(!names().contains(&"file:me".to_string()));
        let err = router.pool.discovery_status()[0]
            .last_error
            .clone()
            .unwrap();
        assert!(err.contains("own listener"), "{err}");
        // A reload keeps the discovered members.
        router
            .pool
            .replace(Vec::new(), cfg.pool.clone(), cfg.breaker.clone());
        assert_eq!(names().len(), MAX_MEMBERS);
    }
}
