//! The attempt engine following the pool (`attempt::connect` with `follow`):
//! a discovery round that replaces the member a connection was planned on
//! while it is being made (paused time, a stub connector, no network).

use std::sync::Arc;
use std::time::Duration;

use super::attempt::{connect, Budget};
use super::{test_pool, Member, Traffic};
use crate::config::schema::BreakerConfig;
use crate::config::UpstreamEntry;
use crate::upstream::{ConnectError, UpstreamSpec};

fn budget() -> Budget {
    Budget {
        max_attempts: 3,
        deadline: Duration::from_secs(5),
        race_after: None,
        backoff_base: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(100),
    }
}

/// A request planned on the pool's only member, which a discovery round
/// then replaced (its proxy deregistered and stopped): the member that
/// replaced it serves the request. With fixed candidates (reverse,
/// doctor) the run stays on what it was given.
#[tokio::test(start_paused = true)]
async fn a_member_replaced_during_the_run_is_followed_by_its_successor() {
    let p = test_pool(&[], BreakerConfig::default());
    let entry = |n: &str| {
        let spec = UpstreamSpec::parse(n, "http://127.0.0.1:9").expect("test URL");
        UpstreamEntry::with_defaults(spec, "etcd")
    };
    p.set_source("etcd:/p/", "etcd", vec![entry("etcd:a")]);
    let planned = p.members().to_vec();
    let dialled = std::sync::Mutex::new(Vec::new());
    let attempt = |m: Arc<Member>| {
        dialled.lock().unwrap().push(m.name().to_string());
        if m.name() == "etcd:a" {
            // Deregistered (the round lands while a is being dialled)
            // and stopped: a refuses.
            p.set_source("etcd:/p/", "etcd", vec![entry("etcd:b")]);
        }
        let name = m.name().to_string();
        async move {
            if name == "etcd:a" {
                return Err(ConnectError::Refused {
                    addr: "stub".into(),
                    proxy: true,
                });
            }
            Ok(name)
        }
    };
    let r = connect(&p, &planned, Some(Traffic::Plain), budget(), &attempt).await;
    assert_eq!(r.map(|(v, _)| v).unwrap(), "etcd:b");
    assert_eq!(*dialled.lock().unwrap(), ["etcd:a", "etcd:b"]);
    // Fixed candidates: a alone, tried again (until ejected), refused.
    dialled.lock().unwrap().clear();
    let r = connect(&p, &planned, None, budget(), &attempt).await;
    assert!(matches!(r, Err(ConnectError::Refused { .. })), "{r:?}");
    let d = dialled.lock().unwrap().clone();
    assert!(!d.is_empty() && d.iter().all(|n| n == "etcd:a"), "{d:?}");
}
