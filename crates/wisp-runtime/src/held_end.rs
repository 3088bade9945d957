//! The response body of an instance that may serve again.
//!
//! A guest finishes its response body a moment before its handler returns
//! and the instance goes back with the idle ones. A client that sends its
//! next request as soon as the previous response is complete would find
//! no idle instance in that moment and get a fresh one. [`HeldEnd`] holds
//! the end of the body (and, for a body of declared length, the frame
//! that completes it) until the instance is released, so that a client's
//! next request finds the instance free.

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;
use wisp_core::{Body, BoxError};

/// A body whose end waits for `released` to be sent or dropped.
pub(crate) struct HeldEnd {
    body: Body,
    /// Bytes still to come of a declared `content-length`.
    remaining: Option<u64>,
    /// The frame that completed the declared length, waiting for release.
    held: Option<Frame<Bytes>>,
    ended: bool,
    released: Option<oneshot::Receiver<()>>,
}

impl HeldEnd {
    pub(crate) fn new(
        body: Body,
        headers: &http::HeaderMap,
        released: oneshot::Receiver<()>,
    ) -> Self {
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

impl http_body::Body for HeldEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body::Body as _;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A body that yields these chunks, each ready at once.
    struct Chunks(VecDeque<&'static str>);

    impl http_body::Body for Chunks {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let next = self.get_mut().0.pop_front();
            Poll::Ready(next.map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes())))))
        }
    }

    fn held(chunks: &[&'static str], length: Option<u64>) -> (HeldEnd, oneshot::Sender<()>) {
        let mut headers = http::HeaderMap::new();
        if let Some(n) = length {
            headers.insert(http::header::CONTENT_LENGTH, n.into());
        }
        let (tx, rx) = oneshot::channel();
        let body = Chunks(chunks.iter().copied().collect()).boxed_unsync();
        (HeldEnd::new(body, &headers, rx), tx)
    }

    /// Polls once: the next frame's data, `Some(None)` for the end, `None`
    /// while pending.
    async fn poll_once(body: &mut HeldEnd) -> Option<Option<Bytes>> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *body).poll_frame(cx) {
                Poll::Pending => None,
                Poll::Ready(None) => Some(None),
                Poll::Ready(Some(frame)) => Some(Some(frame.unwrap().into_data().unwrap())),
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
}
