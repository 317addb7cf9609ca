//! A backend's response body under `[timeouts] body_idle` (the watcher of
//! src/body.rs, shared with forward mode). In reverse mode the backend is
//! the origin: a body it stalls or breaks off is its own fault, so it is
//! reported through `Pool::report` as an upstream fault and `max_fails`
//! ejects a backend that keeps doing it. The client still sees the
//! truncation (a Content-Length shortfall closes the connection; a chunked
//! body ends without its final zero chunk).
//!
//! A client that goes away only drops the body: the watcher reports
//! nothing then, so a client disconnect never counts against a backend.
//!
//! A backend that cut a body within its `fail_timeout` also goes behind
//! the others in the request plan ([`RecentCut`]), before `max_fails`
//! ejects it: the requests still caught in its stalled bodies are cut one
//! by one, and without this each one cut would free a client to be sent
//! straight back to it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::body::{BodyEnd, BodyFault, OnEnd};
use crate::pool::{Member, Outcome};
use crate::upstream::{ConnectError, Phase};

/// When a backend last cut a response body, and for how long that puts it
/// behind the others.
pub(super) struct RecentCut {
    at: Mutex<Option<Instant>>,
    window: Duration,
}

impl RecentCut {
    pub fn new(window: Duration) -> Self {
        RecentCut {
            at: Mutex::new(None),
            window,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.at.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn note(&self) {
        *self.lock() = Some(Instant::now());
    }

    /// A body was cut within the window.
    pub fn recent(&self) -> bool {
        self.lock().is_some_and(|t| t.elapsed() <= self.window)
    }
}

/// What a cut body counts as against the backend.
pub(super) fn body_fault_error(f: BodyFault) -> ConnectError {
    let detail = match f {
        BodyFault::Stalled(d) => format!(
            "response body stalled for {}ms (timeouts.body_idle): cut",
            d.as_millis()
        ),
        BodyFault::Broken => "response body broken off by the backend".to_string(),
    };
    // Phase: the exchange after the response head (there is no body phase).
    ConnectError::Io {
        phase: Phase::FirstByte,
        detail,
        proxy: true,
    }
}

/// The end callback for `m`'s body: a fault is counted, logged, and
/// reported as the backend's fault through `report` (the route's
/// `Pool::report`); a whole body reports nothing more.
pub(super) fn blame_backend<R>(m: Arc<Member>, report: R) -> OnEnd
where
    R: FnOnce(&Member, Outcome) + Send + 'static,
{
    Box::new(move |end| {
        let BodyEnd::Fault(f) = end else {
            return;
        };
        let kind = match f {
            BodyFault::Stalled(_) => "stalled",
            BodyFault::Broken => "broken",
        };
        metrics::counter!("proxyguard_responses_cut_total", "upstream" => m.name().to_string(), "kind" => kind).increment(1);
        tracing::warn!(
            backend = m.name(),
            kind,
            "response body cut short: counted against the backend"
        );
        report(&m, Outcome::UpstreamFault(body_fault_error(f)));
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::IdleBody;
    use crate::config::schema::BreakerConfig;
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    type Item = Result<Frame<Bytes>, std::io::Error>;

    fn channel_body(
        mut rx: tokio::sync::mpsc::Receiver<Item>,
    ) -> StreamBody<impl futures_util::Stream<Item = Item> + Unpin> {
        StreamBody::new(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    fn pool() -> Arc<crate::pool::Pool> {
        Arc::new(crate::pool::test_pool(&["b"], BreakerConfig::default()))
    }

    #[test]
    fn a_recent_cut_lasts_its_window() {
        let c = RecentCut::new(Duration::from_secs(60));
        assert!(!c.recent());
        c.note();
        assert!(c.recent());
        let gone = RecentCut::new(Duration::ZERO);
        gone.note();
        std::thread::sleep(Duration::from_millis(2));
        assert!(!gone.recent(), "past the window it no longer counts");
    }

    #[test]
    fn a_cut_body_is_the_backends_fault() {
        for f in [
            BodyFault::Stalled(Duration::from_secs(1)),
            BodyFault::Broken,
        ] {
            let e = body_fault_error(f);
            assert_eq!(e.fault(), crate::upstream::FaultClass::Upstream, "{e}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_and_ejects_the_backend() {
        let p = pool();
        let m = p.members()[0].clone();
        assert!(m.health.eligible());
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let p2 = p.clone();
        let mut body = IdleBody::<_>::new(channel_body(rx), Some(Duration::from_secs(1)))
            .on_end(blame_backend(m.clone(), move |m, o| p2.report(m, o)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.unwrap().is_err(), "the stall is cut");
        // max_fails = 1 in the test pool: one cut body ejects it.
        assert!(!m.health.eligible(), "the stalling backend is ejected");
        drop(tx);
    }

    #[tokio::test]
    async fn a_broken_body_counts_and_a_client_that_leaves_does_not() {
        let p = pool();
        let m = p.members()[0].clone();
        // The client goes away mid-body: the body is dropped, no error.
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let p2 = p.clone();
        let mut body = IdleBody::<_>::new(channel_body(rx), Some(Duration::from_secs(60)))
            .on_end(blame_backend(m.clone(), move |m, o| p2.report(m, o)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        drop(body);
        drop(tx);
        assert!(m.health.eligible(), "a client disconnect blames nobody");
        // The backend breaks the body off.
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let p3 = p.clone();
        let mut body = IdleBody::<_>::new(channel_body(rx), Some(Duration::from_secs(60)))
            .on_end(blame_backend(m.clone(), move |m, o| p3.report(m, o)));
        tx.send(Err(std::io::Error::other("unexpected EOF")))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_err());
        assert!(!m.health.eligible(), "a broken body counts against it");
    }
}
