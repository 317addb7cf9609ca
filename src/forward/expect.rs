//! `Expect: 100-continue` end to end.
//!
//! hyper's server answers `100 Continue` by itself the moment the request
//! body is first read, and hyper's client reads the body as soon as the
//! head is written. Left alone, the gateway would therefore tell the client
//! to go ahead before the upstream decided. Instead the body forwarded
//! upstream is gated: it is not read (so no 100 goes to the client) until
//! the upstream sends its own `100 Continue` (seen through
//! `hyper::ext::on_informational`), or until `[timeouts] expect_continue`
//! (1 s, as curl waits) passes without any answer (an upstream that ignores
//! `Expect`, as RFC 9110 §10.1.1 allows). A final answer that comes first (417,
//! 401, 413…) goes to the client, and the body is never asked for; the
//! upstream connection is then closed once that answer has been passed on,
//! since the request it carries was never completed.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::header::{HeaderMap, EXPECT};
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::body::{BoxError, ByteBody};

const WAITING: u8 = 0;
/// The body may flow (100 received, or no answer within `EXPECT_WAIT`).
const GO: u8 = 1;
/// A final answer came before the body was asked for.
const ANSWERED: u8 = 2;
/// That answer was passed on: end the unsent body, closing the connection.
const STOP: u8 = 3;

/// Shared between the gated body, the informational callback and the
/// forwarder.
pub struct ContinueGate {
    state: AtomicU8,
    waker: AtomicWaker,
    /// How long the body waits for the upstream's `100 Continue` before it
    /// is sent anyway.
    wait: Duration,
}

impl ContinueGate {
    pub fn new(wait: Duration) -> Self {
        ContinueGate {
            state: AtomicU8::new(WAITING),
            waker: AtomicWaker::new(),
            wait,
        }
    }

    fn set(&self, from: u8, to: u8) -> bool {
        let done = self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if done {
            self.waker.wake();
        }
        done
    }

    /// The upstream said `100 Continue`.
    pub fn go(&self) {
        self.set(WAITING, GO);
    }

    /// The final response arrived; true when the body had not been asked
    /// for yet (the client must then not send it).
    pub fn answered(&self) -> bool {
        self.set(WAITING, ANSWERED)
    }

    /// The final response was passed on; a body that was never asked for
    /// ends now.
    pub fn stop(&self) {
        self.set(ANSWERED, STOP);
    }
}

/// True for `Expect: 100-continue` (the only expectation defined).
pub fn expects_continue(h: &HeaderMap) -> bool {
    h.get_all(EXPECT)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The body was still held back when the upstream's final answer was passed on.
#[derive(Debug, thiserror::Error)]
#[error("the upstream answered before asking for the request body")]
pub struct AnsweredEarly;

/// A request body held back by a [`ContinueGate`]; without a gate it
/// passes straight through.
pub struct Gated<B> {
    inner: B,
    gate: Option<Arc<ContinueGate>>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Gated<B> {
    pub fn open(inner: B) -> Self {
        Gated {
            inner,
            gate: None,
            timer: None,
        }
    }

    pub fn new(inner: B, gate: Arc<ContinueGate>) -> Self {
        Gated {
            inner,
            gate: Some(gate),
            timer: None,
        }
    }
}

impl<B: ByteBody> Body for Gated<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(gate) = &this.gate {
            gate.waker.register(cx.waker());
            match gate.state.load(Ordering::Acquire) {
                GO => this.gate = None,
                STOP => return Poll::Ready(Some(Err(Box::new(AnsweredEarly)))),
                ANSWERED => return Poll::Pending,
                _ => {
                    let wait = gate.wait;
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
                    if timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // No answer at all: the upstream may not do 100-continue.
                    if !gate.set(WAITING, GO) {
                        // Answered meanwhile: poll again under that state.
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    this.gate = None;
                    this.timer = None;
                }
            }
        }
        Pin::new(&mut this.inner)
            .poll_frame(cx)
            .map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

use std::future::Future;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    const WAIT: Duration = Duration::from_secs(1);

    fn body(gate: &Arc<ContinueGate>) -> Gated<Full<Bytes>> {
        Gated::new(Full::new(Bytes::from_static(b"payload")), gate.clone())
    }

    #[tokio::test(start_paused = true)]
    async fn held_until_100_then_flows() {
        let gate = Arc::new(ContinueGate::new(WAIT));
        let mut b = body(&gate);
        let g = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            g.go();
        });
        let started = tokio::time::Instant::now();
        let f = b.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"payload"));
        assert_eq!(started.elapsed(), Duration::from_millis(300));
        // A late final answer changes nothing once the body flows.
        assert!(!gate.answered());
    }

    #[tokio::test(start_paused = true)]
    async fn sent_anyway_when_the_upstream_says_nothing() {
        let gate = Arc::new(ContinueGate::new(WAIT));
        let started = tokio::time::Instant::now();
        let f = body(&gate).frame().await.unwrap().unwrap();
        assert!(f.is_data());
        assert_eq!(started.elapsed(), WAIT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_early_final_answer_keeps_the_body_back_then_ends_it() {
        let gate = Arc::new(ContinueGate::new(WAIT));
        assert!(gate.answered());
        let mut b = body(&gate);
        // Far past the wait the body is still not read.
        let r = tokio::time::timeout(Duration::from_secs(30), b.frame()).await;
        assert!(r.is_err(), "body read after a final answer");
        gate.stop();
        assert!(b.frame().await.unwrap().is_err());
    }

    #[test]
    fn recognises_the_expectation() {
        let mut h = HeaderMap::new();
        assert!(!expects_continue(&h));
        h.insert(EXPECT, "100-Continue".parse().unwrap());
        assert!(expects_continue(&h));
    }
}
