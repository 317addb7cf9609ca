//! Protocol fallback per backend (`[route.fallback] protocol = "http1"`):
//! a backend that cannot be reached over HTTP/2 (ALPN refuses `h2`, the
//! preface is rejected, the h2 connection fails while HTTP/1.1 works) is
//! spoken to over HTTP/1.1 for a while, logged once per downgrade, shown
//! in `/status`, and HTTP/2 is tried again after [`RETRY_H2_AFTER`].

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

// Tokio's clock (std's outside a runtime), so tests can pause it.
use tokio::time::Instant;

use crate::config::route_protocols::BackendProtocol;

/// How long a downgraded backend stays on HTTP/1.1 before h2 is tried again.
pub const RETRY_H2_AFTER: Duration = Duration::from_secs(300);

const UNKNOWN: u8 = 0;
const H1: u8 = 1;
const H2: u8 = 2;

/// One backend's protocol state.
pub struct ProtoState {
    pub proto: BackendProtocol,
    /// Falling back to HTTP/1.1 is allowed.
    pub enabled: bool,
    until: Mutex<Option<Instant>>,
    /// What the last new connection spoke.
    last: AtomicU8,
}

impl ProtoState {
    pub fn new(proto: BackendProtocol, enabled: bool) -> Self {
        ProtoState {
            proto,
            enabled,
            until: Mutex::new(None),
            last: AtomicU8::new(UNKNOWN),
        }
    }

    fn until(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// On HTTP/1.1 now because h2 failed recently.
    pub fn downgraded(&self) -> bool {
        self.until().is_some_and(|t| Instant::now() < t)
    }

    /// Whether a new connection should try HTTP/2.
    pub fn wants_h2(&self) -> bool {
        self.proto.may_speak_h2() && !self.downgraded()
    }

    /// Records that h2 failed and HTTP/1.1 is used instead; logs once per
    /// downgrade (not again while it lasts). True when this call logged.
    pub fn downgrade(&self, backend: &str, why: &str) -> bool {
        let mut g = self.until();
        let now = Instant::now();
        let fresh = !g.is_some_and(|t| now < t);
        *g = Some(now + RETRY_H2_AFTER);
        drop(g);
        if fresh {
            tracing::warn!(
                backend,
                reason = why,
                retry_h2_in_s = RETRY_H2_AFTER.as_secs(),
                "HTTP/2 to backend failed: protocol fallback to HTTP/1.1"
            );
        }
        fresh
    }

    /// Notes what a new connection negotiated.
    pub fn spoke(&self, h2: bool) {
        self.last.store(if h2 { H2 } else { H1 }, Ordering::Relaxed);
    }

    /// For `/status`: `http1`, `h2c`, `h2`, or `http1 (fallback)`.
    pub fn describe(&self) -> &'static str {
        if self.downgraded() {
            return "http1 (fallback)";
        }
        match (self.proto, self.last.load(Ordering::Relaxed)) {
            (BackendProtocol::Http1, _) => "http1",
            (BackendProtocol::H2c, _) => "h2c",
            (BackendProtocol::H2, _) => "h2",
            (BackendProtocol::Https, H2) => "h2",
            (BackendProtocol::Https, H1) => "http1",
            (BackendProtocol::Https, _) => "https",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downgrade_logs_once_and_shows_in_status() {
        let s = ProtoState::new(BackendProtocol::H2c, true);
        assert!(s.wants_h2());
        assert_eq!(s.describe(), "h2c");
        assert!(s.downgrade("b", "preface rejected"), "first downgrade logs");
        assert!(!s.downgrade("b", "again"), "not again while it lasts");
        assert!(!s.wants_h2());
        assert_eq!(s.describe(), "http1 (fallback)");
    }

    #[tokio::test(start_paused = true)]
    async fn h2_is_tried_again_after_the_retry_time() {
        let s = ProtoState::new(BackendProtocol::H2, true);
        assert!(s.downgrade("b", "ALPN did not choose h2"));
        tokio::time::advance(RETRY_H2_AFTER - Duration::from_secs(1)).await;
        assert!(!s.wants_h2(), "still on HTTP/1.1");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.wants_h2(), "h2 again after {RETRY_H2_AFTER:?}");
        assert_eq!(s.describe(), "h2");
        assert!(s.downgrade("b", "again"), "a new downgrade is logged again");
    }

    #[test]
    fn https_shows_what_alpn_chose() {
        let s = ProtoState::new(BackendProtocol::Https, false);
        assert_eq!(s.describe(), "https");
        s.spoke(true);
        assert_eq!(s.describe(), "h2");
        s.spoke(false);
        assert_eq!(s.describe(), "http1");
        assert!(!ProtoState::new(BackendProtocol::Http1, true).wants_h2());
    }
}
