//! The upstream pool: the set of upstreams (replaceable at run time, for
//! reload and discovery), their health, and the choice of candidates.

pub mod health;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Applies, UpstreamEntry};
use crate::upstream::UpstreamSpec;

pub use health::Health;

/// One upstream in the pool with its health state.
#[derive(Debug)]
pub struct Member {
    pub entry: UpstreamEntry,
    pub health: Health,
}

impl Member {
    pub fn spec(&self) -> &UpstreamSpec {
        &self.entry.spec
    }
    pub fn name(&self) -> &str {
        &self.entry.spec.name
    }
}

/// What kind of traffic asks for candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    Plain,
    Tunnel,
}

impl Traffic {
    fn applies(self, a: Applies) -> bool {
        match self {
            Traffic::Plain => a.plain,
            Traffic::Tunnel => a.tunnel,
        }
    }
}

/// The upstream set. Cheap to read from any task.
pub struct Pool {
    members: ArcSwap<Vec<Arc<Member>>>,
}

impl Pool {
    pub fn new(entries: Vec<UpstreamEntry>) -> Self {
        let members = entries
            .into_iter()
            .map(|entry| {
                Arc::new(Member {
                    health: Health::new(&entry),
                    entry,
                })
            })
            .collect();
        Pool {
            members: ArcSwap::from_pointee(members),
        }
    }

    /// A snapshot of all members.
    pub fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.members.load_full()
    }

    /// Replaces the upstream set, keeping health of unchanged members.
    pub fn replace(&self, entries: Vec<UpstreamEntry>) {
        let old = self.members();
        let members = entries
            .into_iter()
            .map(|entry| {
                if let Some(m) = old.iter().find(|m| {
                    m.entry.spec.name == entry.spec.name
                        && m.entry.spec.redacted_url() == entry.spec.redacted_url()
                        && m.entry.spec.credentials == entry.spec.credentials
                }) {
                    m.clone()
                } else {
                    Arc::new(Member {
                        health: Health::new(&entry),
                        entry,
                    })
                }
            })
            .collect();
        self.members.store(Arc::new(members));
    }

    /// Candidates for one connection, best first.
    pub fn candidates(&self, traffic: Traffic) -> Vec<Arc<Member>> {
        let members = self.members();
        let mut v: Vec<Arc<Member>> = members
            .iter()
            .filter(|m| traffic.applies(m.entry.applies))
            .cloned()
            .collect();
        v.sort_by_key(|m| m.entry.priority);
        v
    }
}
