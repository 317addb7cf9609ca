//! Body wrappers for forwarding.
//!
//! - [`ClientBody`] remembers whether the *client's* request body failed
//!   (bad chunked encoding, a Content-Length body abandoned half way), so that
//!   failure is answered as the client's (400) and never counted against the
//!   upstream that was receiving it.
//! - [`IdleBody`] cuts a response body that stalls for longer than
//!   `body_idle`: it ends in an error, so the client sees a truncated
//!   response (hyper closes the connection without the final chunk), never a
//!   complete-looking one. How the body ended is reported once through
//!   `on_end`: whole, stalled, or broken off by the upstream. A client that
//!   stops reading or goes away ends it with no report at all.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The error of a body that may carry any error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body of `Bytes` frames whose error becomes a [`BoxError`]: what the
/// wrappers here (and the `Expect` gate) can wrap.
pub trait ByteBody: Body<Data = Bytes, Error: Into<BoxError>> + Unpin {}
impl<B> ByteBody for B where B: Body<Data = Bytes, Error: Into<BoxError>> + Unpin {}

/// The client's request body, watched for errors.
pub struct ClientBody<B> {
    inner: B,
    failed: Arc<AtomicBool>,
}

impl<B> ClientBody<B> {
    pub fn new(inner: B) -> (Self, Arc<AtomicBool>) {
        let failed = Arc::new(AtomicBool::new(false));
        (
            ClientBody {
                inner,
                failed: failed.clone(),
            },
            failed,
        )
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for ClientBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(_))) = &r {
            self.failed.store(true, Ordering::Relaxed);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The upstream stalled mid-body for longer than allowed.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent no body data for {0:?}: response cut")]
pub struct BodyStalled(pub Duration);

/// Called once when the body ends whole, or the upstream stalls or breaks
/// it off.
pub type OnEnd = Box<dyn FnOnce(BodyEnd) + Send>;

/// How a watched response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEnd {
    /// The upstream delivered it whole.
    Complete,
    Fault(BodyFault),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    Stalled(Duration),
    Broken,
}

/// Holds back a body's last frame (or its end) until it is ready: e.g.
/// the upstream connection is back in the idle pool before the client can
/// see the response end and send its next request.
pub trait EndGate: Unpin {
    /// Polled once the last frame is at hand; `Ready` lets it through.
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<()>;
}

/// No gate: the end passes at once.
impl EndGate for () {
    fn poll_end(&mut self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

type Polled = Option<Result<Frame<Bytes>, BoxError>>;

/// A response body with an idle deadline between frames.
pub struct IdleBody<B, G = ()> {
    inner: B,
    idle: Option<Duration>,
    timer: Option<Pin<Box<Sleep>>>,
    on_end: Option<OnEnd>,
    on_drop: Option<Box<dyn FnOnce() + Send>>,
    gate: Option<G>,
    /// The last frame (or the end), waiting for `gate` (boxed: rare, and
    /// keeps the body small).
    held: Option<Box<Polled>>,
}

impl<B, G> IdleBody<B, G> {
    /// `idle = None` passes the body through untouched.
    pub fn new(inner: B, idle: Option<Duration>) -> Self {
        IdleBody {
            inner,
            idle,
            timer: None,
            on_end: None,
            on_drop: None,
            gate: None,
            held: None,
        }
    }

    /// The body's last frame waits for `gate` (see [`EndGate`]).
    pub fn end_gate(mut self, gate: G) -> Self {
        self.gate = Some(gate);
        self
    }

    pub fn on_end(mut self, f: OnEnd) -> Self {
        self.on_end = Some(f);
        self
    }

    /// Called once when the body is dropped: sent whole, cut, or abandoned
    /// by the client.
    pub fn on_drop(mut self, f: Box<dyn FnOnce() + Send>) -> Self {
        self.on_drop = Some(f);
        self
    }

    fn ended(&mut self, how: BodyEnd) {
        if let Some(cb) = self.on_end.take() {
            cb(how);
        }
    }
}

impl<B, G: EndGate> IdleBody<B, G> {
    /// Passes the held last frame once the gate opens.
    fn release(&mut self, cx: &mut Context<'_>) -> Poll<Polled> {
        if let Some(g) = &mut self.gate {
            if g.poll_end(cx).is_pending() {
                return Poll::Pending;
            }
        }
        self.gate = None;
        Poll::Ready(self.held.take().and_then(|h| *h))
    }
}

impl<B: ByteBody, G: EndGate> Body for IdleBody<B, G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.held.is_some() {
            return this.release(cx);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(r) => {
                this.timer = None;
                let last = match &r {
                    Some(Err(_)) => {
                        this.ended(BodyEnd::Fault(BodyFault::Broken));
                        false
                    }
                    None => true,
                    Some(Ok(_)) => this.inner.is_end_stream(),
                };
                if last {
                    this.ended(BodyEnd::Complete);
                }
                let r = r.map(|f| f.map_err(Into::into));
                if let (true, Some(g)) = (last, &mut this.gate) {
                    if g.poll_end(cx).is_pending() {
                        this.held = Some(Box::new(r));
                        return Poll::Pending;
                    }
                    this.gate = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let Some(idle) = this.idle else {
                    return Poll::Pending;
                };
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + idle))
                });
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        this.timer = None;
                        this.ended(BodyEnd::Fault(BodyFault::Stalled(idle)));
                        Poll::Ready(Some(Err(Box::new(BodyStalled(idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let held = match &self.held {
            Some(h) => match &**h {
                Some(Ok(f)) => f.data_ref().map_or(0, |d| d.len() as u64),
                _ => 0,
            },
            None => 0,
        };
        let inner = self.inner.size_hint();
        let mut h = SizeHint::new();
        h.set_lower(inner.lower() + held);
        if let Some(u) = inner.upper() {
            h.set_upper(u + held);
        }
        h
    }
}

impl<B, G> Drop for IdleBody<B, G> {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

use std::future::Future;

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Item = Result<Frame<Bytes>, std::io::Error>;

    #[tokio::test(start_paused = true)]
    async fn stalled_body_is_cut_with_an_error() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let stream = tokio_stream_from(rx);
        let seen = Arc::new(std::sync::Mutex::new(None));
        let s2 = seen.clone();
        let mut body =
            IdleBody::<_, ()>::new(StreamBody::new(stream), Some(Duration::from_secs(1)))
                .on_end(Box::new(move |f| *s2.lock().unwrap() = Some(f)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let f = body.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), Bytes::from_static(b"abc"));
        // Nothing more arrives: after 1 s the body fails instead of ending.
        let r = body.frame().await.unwrap();
        assert!(r.is_err());
        assert_eq!(
            *seen.lock().unwrap(),
            Some(BodyEnd::Fault(BodyFault::Stalled(Duration::from_secs(1))))
        );
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn whole_body_reports_complete_and_abandoned_reports_nothing() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let seen = Arc::new(std::sync::Mutex::new(None));
        let s2 = seen.clone();
        let mut body = IdleBody::<_, ()>::new(
            StreamBody::new(tokio_stream_from(rx)),
            Some(Duration::from_secs(1)),
        )
        .on_end(Box::new(move |f| *s2.lock().unwrap() = Some(f)));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        drop(tx);
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.is_none());
        assert_eq!(*seen.lock().unwrap(), Some(BodyEnd::Complete));
        // A client that stops reading and goes away: no verdict at all.
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let seen = Arc::new(std::sync::Mutex::new(None));
        let s2 = seen.clone();
        let body = IdleBody::<_, ()>::new(
            StreamBody::new(tokio_stream_from(rx)),
            Some(Duration::from_secs(1)),
        )
        .on_end(Box::new(move |f| *s2.lock().unwrap() = Some(f)));
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(body);
        assert_eq!(*seen.lock().unwrap(), None);
        drop(tx);
    }

    async fn poll_once<F: Future>(mut f: Pin<&mut F>) -> Poll<F::Output> {
        std::future::poll_fn(|cx| Poll::Ready(f.as_mut().poll(cx))).await
    }

    struct Gate(Arc<AtomicBool>);
    impl EndGate for Gate {
        fn poll_end(&mut self, _: &mut Context<'_>) -> Poll<()> {
            match self.0.load(Ordering::Relaxed) {
                true => Poll::Ready(()),
                false => Poll::Pending,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn end_waits_for_the_gate() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let open = Arc::new(AtomicBool::new(false));
        let mut body: IdleBody<_, Gate> = IdleBody::new(
            StreamBody::new(tokio_stream_from(rx)),
            Some(Duration::from_secs(1)),
        )
        .end_gate(Gate(open.clone()));
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        drop(tx);
        assert!(body.frame().await.unwrap().is_ok());
        // The end is at hand but held back: not over, not stalled.
        let mut next = std::pin::pin!(body.frame());
        assert!(poll_once(next.as_mut()).await.is_pending());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(poll_once(next.as_mut()).await.is_pending());
        open.store(true, Ordering::Relaxed);
        assert!(matches!(poll_once(next.as_mut()).await, Poll::Ready(None)));
    }

    #[tokio::test]
    async fn client_body_error_is_remembered() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Item>(4);
        let (mut body, failed) = ClientBody::new(StreamBody::new(tokio_stream_from(rx)));
        tx.send(Err(std::io::Error::other("bad chunk")))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_err());
        assert!(failed.load(Ordering::Relaxed));
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Item>,
    ) -> impl futures_util::Stream<Item = Item> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
