//! Handing an upstream connection back to the idle pool.
//!
//! After a response, the connection goes back once hyper says it is ready
//! for another request. For a request without a body this happens *before*
//! the client sees the response end ([`Checkin`] is the response body's end
//! gate): a client's next sequential request then finds the connection
//! instead of racing a background task and dialling a second one. A body
//! that ends early (cut, abandoned) or a request with a body (the request
//! may still be streaming when the response ends) falls back to a task that
//! checks the connection in when it becomes ready.

use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::client::conn::http1::SendRequest;

use super::{OutBody, PoolKey};
use crate::body::EndGate;
use crate::http_client::IdlePool;

pub(super) type Idle = Arc<IdlePool<PoolKey, SendRequest<OutBody>>>;

/// A connection on its way back to the idle pool.
pub struct Checkin {
    idle: Idle,
    conn: Option<(PoolKey, SendRequest<OutBody>)>,
}

impl Checkin {
    pub(super) fn new(idle: Idle, key: PoolKey, tx: SendRequest<OutBody>) -> Self {
        Checkin {
            idle,
            conn: Some((key, tx)),
        }
    }
}

impl EndGate for Checkin {
    fn poll_end(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some((_, tx)) = &mut self.conn else {
            return Poll::Ready(());
        };
        match tx.poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Ok(())) => {
                if let Some((key, tx)) = self.conn.take() {
                    self.idle.checkin(key, tx);
                }
            }
            // Closed (e.g. `Connection: close`): nothing to keep.
            Poll::Ready(Err(_)) => self.conn = None,
        }
        Poll::Ready(())
    }
}

impl Drop for Checkin {
    fn drop(&mut self) {
        let Some((key, mut tx)) = self.conn.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let idle = self.idle.clone();
        rt.spawn(async move {
            if tx.ready().await.is_ok() {
                idle.checkin(key, tx);
            }
        });
    }
}
