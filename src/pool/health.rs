//! Per-upstream health: counters and the last error. Updated with atomics or
//! short locks never held across `.await`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::config::UpstreamEntry;
use crate::upstream::ConnectError;

#[derive(Debug, Default)]
pub struct Health {
    pub successes: AtomicU64,
    pub failures: AtomicU64,
    last_error: Mutex<Option<(SystemTime, String)>>,
}

impl Health {
    pub fn new(_entry: &UpstreamEntry) -> Self {
        Health::default()
    }

    pub fn record_success(&self, _took: Duration) {
        self.successes.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_failure(&self, err: &ConnectError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.last_error.lock() {
            *g = Some((SystemTime::now(), err.to_string()));
        }
    }

    pub fn last_error(&self) -> Option<(SystemTime, String)> {
        self.last_error.lock().ok().and_then(|g| g.clone())
    }
}
