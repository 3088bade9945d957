//! How a function's response body goes out.
//!
//! Most functions have written their whole response by the time its head
//! is handed to the client. [`take_ready`] takes what the body holds
//! ready then: a body that has ended goes out whole, with a
//! `content-length` (one write, no chunked framing), and the rest of a
//! body still being written streams after what was taken.
//!
//! A guest finishes its response body a moment before its handler returns
//! and the instance goes back with the idle ones. A client that sends its
//! next request as soon as the previous response is complete would find
//! no idle instance in that moment and get a fresh one. [`HeldEnd`] holds
//! the end of the body (and, for a body of declared length, the frame
//! that completes it) until the instance is released, so that a client's
//! next request finds the instance free.

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use tokio::sync::oneshot;
use wisp_core::{Body, BoxError};

/// What polling one of these bodies for a frame gives.
type Polled = Poll<Option<Result<Frame<Bytes>, BoxError>>>;

/// A body whose end waits for `released` to be sent or dropped.
pub(crate) struct HeldEnd<B> {
    body: B,
    /// Bytes still to come of a declared `content-length`.
    remaining: Option<u64>,
    /// The frame that completed the declared length, waiting for release.
    held: Option<Frame<Bytes>>,
    ended: bool,
    released: Option<oneshot::Receiver<()>>,
}

impl<B> HeldEnd<B> {
    pub(crate) fn new(body: B, headers: &http::HeaderMap, released: oneshot::Receiver<()>) -> Self {
        let remaining = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        HeldEnd {
            body,
            remaining,
            held: None,
            ended: false,
            released: Some(released),
        }
    }

    /// Ready once the instance is released (or its invocation is gone).
    fn poll_released(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(rx) = &mut self.released {
            if Pin::new(rx).poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.released = None;
        }
        Poll::Ready(())
    }
}

impl<B> http_body::Body for HeldEnd<B>
where
    B: http_body::Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        if this.held.is_some() || this.ended {
            if this.poll_released(cx).is_pending() {
                return Poll::Pending;
            }
            return Poll::Ready(this.held.take().map(Ok));
        }
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let completes = match (frame.data_ref(), &mut this.remaining) {
                    (Some(data), Some(remaining)) if *remaining > 0 => {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                        *remaining == 0
                    }
                    _ => false,
                };
                if completes && this.poll_released(cx).is_pending() {
                    this.held = Some(frame);
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                this.ended = true;
                match this.poll_released(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => Poll::Ready(None),
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && self.released.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Most bytes of a response body [`take_ready`] takes to send whole.
pub(crate) const TAKE_READY_BYTES: usize = 64 * 1024;

/// `body`, with what it has ready now (up to [`TAKE_READY_BYTES`]) taken
/// out of it: the whole body if it has ended, else what was taken followed
/// by the rest. Never waits.
pub(crate) fn take_ready<B>(mut body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let mut data = Data::None;
    let mut after = None;
    let ended = loop {
        if data.len() > TAKE_READY_BYTES {
            break false;
        }
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(None) => break true,
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(bytes) => data.push(bytes),
                Err(trailers) => {
                    after = Some(Ok(trailers));
                    break false;
                }
            },
            Poll::Ready(Some(Err(e))) => {
                after = Some(Err(e.into()));
                break false;
            }
            Poll::Pending => break false,
        }
    };
    let data = data.into_bytes();
    if ended {
        return Full::new(data)
            .map_err(|never| match never {})
            .boxed_unsync();
    }
    let mut ahead = VecDeque::new();
    if !data.is_empty() {
        ahead.push_back(Ok(Frame::data(data)));
    }
    ahead.extend(after);
    let rest = body.map_err(Into::into).boxed_unsync();
    if ahead.is_empty() {
        return rest;
    }
    Ahead { ahead, rest }.boxed_unsync()
}

/// Data frames taken so far: one kept as it is, more copied into one.
enum Data {
    None,
    One(Bytes),
    Many(BytesMut),
}

impl Data {
    fn len(&self) -> usize {
        match self {
            Data::None => 0,
            Data::One(b) => b.len(),
            Data::Many(b) => b.len(),
        }
    }

    fn push(&mut self, bytes: Bytes) {
        *self = match std::mem::replace(self, Data::None) {
            Data::None => Data::One(bytes),
            Data::One(first) => {
                let mut all = BytesMut::with_capacity(first.len() + bytes.len());
                all.extend_from_slice(&first);
                all.extend_from_slice(&bytes);
                Data::Many(all)
            }
            Data::Many(mut all) => {
                all.extend_from_slice(&bytes);
                Data::Many(all)
            }
        }
    }

    fn into_bytes(self) -> Bytes {
        match self {
            Data::None => Bytes::new(),
            Data::One(b) => b,
            Data::Many(b) => b.freeze(),
        }
    }
}

/// Frames taken out of a body ahead of the rest of it.
struct Ahead {
    ahead: VecDeque<Result<Frame<Bytes>, BoxError>>,
    rest: Body,
}

impl http_body::Body for Ahead {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = self.get_mut();
        match this.ahead.pop_front() {
            Some(item) => Poll::Ready(Some(item)),
            None => Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_empty() && self.rest.is_end_stream()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;

    /// In a [`Chunks`] script: no frame this time (the next poll goes on).
    const PENDING: &str = "<pending>";
    /// In a [`Chunks`] script: a trailers frame (`x-done: yes`).
    const TRAILERS: &str = "<trailers>";

    /// A body that yields these chunks, each ready at once but for
    /// [`PENDING`] and [`TRAILERS`].
    struct Chunks(VecDeque<&'static str>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(self: Pin<&mut Self>, _: &mut Context<'_>) -> Polled {
            match self.get_mut().0.pop_front() {
                Some(PENDING) => Poll::Pending,
                Some(TRAILERS) => {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("x-done", http::HeaderValue::from_static("yes"));
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                next => {
                    Poll::Ready(next.map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))))
                }
            }
        }
    }

    fn chunks(script: &[&'static str]) -> Chunks {
        Chunks(script.iter().copied().collect())
    }

    fn held(chunks: &[&'static str], length: Option<u64>) -> (HeldEnd<Body>, oneshot::Sender<()>) {
        let mut headers = http::HeaderMap::new();
        if let Some(n) = length {
            headers.insert(http::header::CONTENT_LENGTH, n.into());
        }
        let (tx, rx) = oneshot::channel();
        let body = self::chunks(chunks).boxed_unsync();
        (HeldEnd::new(body, &headers, rx), tx)
    }

    /// Polls once: the next frame's data, `Some(None)` for the end, `None`
    /// while pending.
    async fn poll_once(
        body: &mut (impl http_body::Body<Data = Bytes> + Unpin),
    ) -> Option<Option<Bytes>> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => None,
                Poll::Ready(None) => Some(None),
                Poll::Ready(Some(Ok(frame))) => Some(Some(frame.into_data().ok().unwrap())),
                Poll::Ready(Some(Err(_))) => panic!("an error frame"),
            })
        })
        .await
    }

    #[tokio::test]
    async fn a_streamed_body_ends_only_once_released() {
        let (mut body, release) = held(&["a", "b"], None);
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("a"))));
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("b"))));
        assert_eq!(poll_once(&mut body).await, None, "the end waits");
        assert!(!body.is_end_stream());
        release.send(()).unwrap();
        assert_eq!(poll_once(&mut body).await, Some(None));
    }

    #[tokio::test]
    async fn a_body_of_declared_length_holds_its_last_frame() {
        let (mut body, release) = held(&["ab", "c"], Some(3));
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("ab"))));
        assert_eq!(poll_once(&mut body).await, None, "the last frame waits");
        assert_eq!(poll_once(&mut body).await, None);
        drop(release);
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("c"))));
        assert_eq!(poll_once(&mut body).await, Some(None));
    }

    #[tokio::test]
    async fn a_released_body_passes_through() {
        let (body, release) = held(&["a", "b"], Some(2));
        release.send(()).unwrap();
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(collected, Bytes::from("ab"));
        let (mut body, release) = held(&["a"], None);
        drop(release);
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("a"))));
        assert_eq!(poll_once(&mut body).await, Some(None));
    }

    #[tokio::test]
    async fn a_body_that_has_ended_goes_out_whole_with_its_length() {
        let body = take_ready(chunks(&["Hello", ", ", "Wisp"]));
        assert_eq!(body.size_hint().exact(), Some(11));
        assert!(!body.is_end_stream());
        assert_eq!(body.collect().await.unwrap().to_bytes(), "Hello, Wisp");
        let empty = take_ready(chunks(&[]));
        assert_eq!(empty.size_hint().exact(), Some(0));
        assert!(empty.is_end_stream());
    }

    #[tokio::test]
    async fn a_body_still_being_written_streams_after_what_was_taken() {
        let mut body = take_ready(chunks(&["a", "b", PENDING, "c"]));
        assert_eq!(body.size_hint().exact(), None, "no length is known");
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("ab"))));
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("c"))));
        assert_eq!(poll_once(&mut body).await, Some(None));
        // Nothing ready: the body as it was.
        let mut body = take_ready(chunks(&[PENDING, "x"]));
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("x"))));
        assert_eq!(poll_once(&mut body).await, Some(None));
    }

    #[tokio::test]
    async fn trailers_and_large_bodies_are_kept_in_order() {
        let collected = take_ready(chunks(&["a", TRAILERS]))
            .collect()
            .await
            .unwrap();
        assert_eq!(collected.trailers().unwrap()["x-done"], "yes");
        assert_eq!(collected.to_bytes(), "a");

        let big: &'static str = "x".repeat(TAKE_READY_BYTES).leak();
        let mut body = take_ready(chunks(&[big, "y", "z"]));
        assert_eq!(body.size_hint().exact(), None, "over the limit it streams");
        let first = poll_once(&mut body).await.unwrap().unwrap();
        assert_eq!(first.len(), TAKE_READY_BYTES + 1);
        assert_eq!(poll_once(&mut body).await, Some(Some(Bytes::from("z"))));
        assert_eq!(poll_once(&mut body).await, Some(None));
    }
}
