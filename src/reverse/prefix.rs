//! Reading a request body of unknown length (chunked, or HTTP/2 without
//! `content-length`) so that a small one can be held for a retry: it is
//! read up to a limit and within a deadline. A body that ends within both
//! is held in full; one that outgrows the limit, or whose client is too
//! slow to finish in time, streams on (what was read, then the rest) and is
//! never sent again. Memory stays bounded by the limit plus one frame.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body_util::{BodyExt, BodyStream, StreamBody};
use hyper::body::{Body, Frame};
use tokio::time::Instant;

use super::{BoxError, ReqBody};

/// What reading the start of a body came to.
pub(super) enum Prefix<B> {
    /// The whole body, within the limit (trailers, if it had any).
    Held(Bytes, Option<HeaderMap>),
    /// Too big or too slow: the frames read so far, and the rest.
    Streaming(VecDeque<Frame<Bytes>>, B),
}

/// The client's body failed while it was being read (malformed chunked
/// encoding, a client that went away): the client's fault.
#[derive(Debug, thiserror::Error)]
#[error("cannot read request body: {0}")]
pub(super) struct ClientBodyError(BoxError);

/// Reads `body` until it ends, passes `limit` bytes, or `deadline` passes.
pub(super) async fn read<B>(
    mut body: B,
    limit: usize,
    deadline: Instant,
) -> Result<Prefix<B>, ClientBodyError>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut frames = VecDeque::new();
    let mut bytes = 0usize;
    loop {
        let next = match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(n) => n,
            Err(_) => return Ok(Prefix::Streaming(frames, body)),
        };
        match next {
            None => return Ok(Prefix::Held(join(&frames, bytes), trailers(&frames))),
            Some(Err(e)) => return Err(ClientBodyError(e.into())),
            Some(Ok(f)) => {
                bytes += f.data_ref().map_or(0, |d| d.len());
                frames.push_back(f);
                if bytes > limit {
                    return Ok(Prefix::Streaming(frames, body));
                }
            }
        }
    }
}

fn join(frames: &VecDeque<Frame<Bytes>>, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(len);
    for d in frames.iter().filter_map(Frame::data_ref) {
        b.extend_from_slice(d);
    }
    b.freeze()
}

fn trailers(frames: &VecDeque<Frame<Bytes>>) -> Option<HeaderMap> {
    frames.iter().rev().find_map(Frame::trailers_ref).cloned()
}

/// A held body with its trailers, for one attempt.
pub(super) fn held_body(data: Bytes, trailers: Option<HeaderMap>) -> ReqBody {
    let mut frames = vec![Ok::<_, BoxError>(Frame::data(data))];
    frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
    StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
}

/// The frames already read, then the rest of the client's stream.
pub(super) fn streaming_body<B>(read: VecDeque<Frame<Bytes>>, rest: B) -> ReqBody
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    use futures_util::StreamExt;
    let rest = BodyStream::new(rest).map(|r| r.map_err(Into::into));
    let all = futures_util::stream::iter(read.into_iter().map(Ok)).chain(rest);
    StreamBody::new(all).boxed_unsync()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    type Item = Result<Frame<Bytes>, std::io::Error>;

    fn channel() -> (
        tokio::sync::mpsc::Sender<Item>,
        StreamBody<impl futures_util::Stream<Item = Item> + Unpin>,
    ) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Item>(16);
        let body = StreamBody::new(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })));
        (tx, body)
    }

    fn data(s: &'static str) -> Item {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn a_small_body_is_held_in_full_with_its_trailers() {
        let (tx, body) = channel();
        for c in ["ab", "cd"] {
            tx.send(data(c)).await.unwrap();
        }
        let mut t = HeaderMap::new();
        t.insert("x-t", "1".parse().unwrap());
        tx.send(Ok(Frame::trailers(t))).await.unwrap();
        drop(tx);
        let Ok(Prefix::Held(b, t)) = read(body, 4, far()).await else {
            panic!("not held");
        };
        assert_eq!(b, "abcd");
        assert_eq!(t.unwrap()["x-t"], "1");
        let again = held_body(b, None).collect().await.unwrap().to_bytes();
        assert_eq!(again, "abcd");
    }

    #[tokio::test]
    async fn a_body_over_the_limit_streams_whole_and_is_not_held() {
        let (tx, body) = channel();
        for c in ["abc", "def", "ghi"] {
            tx.send(data(c)).await.unwrap();
        }
        drop(tx);
        let Ok(Prefix::Streaming(read_so_far, rest)) = read(body, 4, far()).await else {
            panic!("held a body over the limit");
        };
        assert_eq!(read_so_far.len(), 2, "reading stops just past the limit");
        let all = streaming_body(read_so_far, rest).collect().await.unwrap();
        assert_eq!(all.to_bytes(), "abcdefghi");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_client_streams_after_the_deadline() {
        let (tx, body) = channel();
        tx.send(data("ab")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(3);
        let Ok(Prefix::Streaming(read_so_far, rest)) = read(body, 100, deadline).await else {
            panic!("held a body that never ended");
        };
        assert_eq!(read_so_far.len(), 1);
        tx.send(data("cd")).await.unwrap();
        drop(tx);
        let all = streaming_body(read_so_far, rest).collect().await.unwrap();
        assert_eq!(all.to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_broken_client_body_is_the_clients_error() {
        let (tx, body) = channel();
        tx.send(data("ab")).await.unwrap();
        tx.send(Err(std::io::Error::other("bad chunk")))
            .await
            .unwrap();
        assert!(read(body, 100, far()).await.is_err());
    }
}
