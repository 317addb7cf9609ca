//! A request body that can be sent again: frames are streamed to the first
//! backend as they arrive from the client and remembered (up to a limit),
//! so a retry on another backend replays them and then continues with the
//! rest of the client's stream. Past the limit nothing more is remembered
//! and the body can no longer be replayed (no retry then).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

use super::BoxError;

struct Shared<B> {
    source: B,
    /// Frames pulled from the source so far, from index `base`.
    kept: Vec<Frame<Bytes>>,
    /// Absolute index of `kept[0]` (non-zero once the limit was passed).
    base: usize,
    bytes: usize,
    limit: usize,
    overflow: bool,
    done: bool,
}

/// The client's body, shared by the attempts of one request.
pub struct Replay<B> {
    shared: Arc<Mutex<Shared<B>>>,
}

/// One attempt's view of the body.
pub struct ReplayReader<B> {
    shared: Arc<Mutex<Shared<B>>>,
    pos: usize,
}

fn copy(f: &Frame<Bytes>) -> Frame<Bytes> {
    match (f.data_ref(), f.trailers_ref()) {
        (Some(d), _) => Frame::data(d.clone()),
        (None, Some(t)) => Frame::trailers(t.clone()),
        (None, None) => Frame::trailers(HeaderMap::new()),
    }
}

impl<B> Replay<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    pub fn new(source: B, limit: usize) -> Self {
        Replay {
            shared: Arc::new(Mutex::new(Shared {
                source,
                kept: Vec::new(),
                base: 0,
                bytes: 0,
                limit,
                overflow: false,
                done: false,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<B>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A reader from the start, or None once the body outgrew the limit.
    pub fn reader(&self) -> Option<ReplayReader<B>> {
        if self.lock().overflow {
            return None;
        }
        Some(ReplayReader {
            shared: self.shared.clone(),
            pos: 0,
        })
    }
}

impl<B> Body for ReplayReader<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let shared = self.shared.clone();
        let mut g = shared.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut *g;
        if self.pos < s.base {
            return Poll::Ready(Some(Err("request body is too large to send again".into())));
        }
        let end = s.base + s.kept.len();
        if self.pos < end {
            let f = copy(&s.kept[self.pos - s.base]);
            self.pos += 1;
            return Poll::Ready(Some(Ok(f)));
        }
        if s.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut s.source).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.done = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(Some(Ok(f))) => {
                s.bytes += f.data_ref().map_or(0, |d| d.len());
                if !s.overflow && s.bytes > s.limit {
                    s.overflow = true;
                    s.base += s.kept.len();
                    s.kept.clear();
                }
                if s.overflow {
                    s.base += 1;
                } else {
                    s.kept.push(copy(&f));
                }
                self.pos += 1;
                Poll::Ready(Some(Ok(f)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let g = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        g.done && self.pos >= g.base + g.kept.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    type Frames = futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>;

    fn source(chunks: &[&'static str]) -> StreamBody<Frames> {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .chain(std::iter::once(Ok(Frame::trailers({
                let mut t = HeaderMap::new();
                t.insert("x-t", "1".parse().unwrap());
                t
            }))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    #[tokio::test]
    async fn a_second_reader_replays_everything_with_trailers() {
        let r = Replay::new(source(&["ab", "cd"]), 100);
        let first = r.reader().unwrap().collect().await.unwrap();
        assert_eq!(first.trailers().unwrap()["x-t"], "1");
        assert_eq!(first.to_bytes(), "abcd");
        let again = r.reader().expect("replayable").collect().await.unwrap();
        assert_eq!(again.trailers().unwrap()["x-t"], "1");
        assert_eq!(again.to_bytes(), "abcd");
    }

    #[tokio::test]
    async fn a_replay_continues_with_the_rest_of_the_stream() {
        let r = Replay::new(source(&["ab", "cd", "ef"]), 100);
        let mut first = r.reader().unwrap();
        let f = first.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "ab");
        drop(first); // the attempt failed after one frame
        let all = r.reader().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcdef");
    }

    #[tokio::test]
    async fn past_the_limit_it_streams_but_cannot_replay() {
        let r = Replay::new(source(&["abc", "def", "ghi"]), 4);
        let all = r.reader().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(all, "abcdefghi", "the first attempt still gets it all");
        assert!(r.reader().is_none());
    }
}
