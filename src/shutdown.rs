//! Graceful shutdown: a signal every listener and relay watches, and a count
//! of live connections to wait for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
    live: Arc<(AtomicUsize, Notify)>,
    /// Set when the grace period is over: live tunnels end then.
    expired: Arc<watch::Sender<bool>>,
}

/// Held by each live client connection.
pub struct LiveGuard(Arc<(AtomicUsize, Notify)>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0 .0.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0 .1.notify_waiters();
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Shutdown {
            tx: Arc::new(tx),
            rx,
            live: Arc::new((AtomicUsize::new(0), Notify::new())),
            expired: Arc::new(watch::channel(false).0),
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is triggered.
    pub async fn triggered(&self) {
        let mut rx = self.rx.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    pub fn live(&self) -> LiveGuard {
        self.live.0.fetch_add(1, Ordering::AcqRel);
        LiveGuard(self.live.clone())
    }

    pub fn live_count(&self) -> usize {
        self.live.0.load(Ordering::Acquire)
    }

    /// Resolves once the grace period is over (tunnels watch it to close).
    pub async fn expired(&self) {
        let mut rx = self.expired.subscribe();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until no connection is live or `grace` passes; then tells live
    /// tunnels to close and returns how many were still live.
    pub async fn drain(&self, grace: Duration) -> usize {
        let wait = async {
            loop {
                let n = self.live.1.notified();
                if self.live_count() == 0 {
                    return;
                }
                n.await;
            }
        };
        let _ = tokio::time::timeout(grace, wait).await;
        let left = self.live_count();
        let _ = self.expired.send(true);
        left
    }
}
