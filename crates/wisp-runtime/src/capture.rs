//! Bounded capture of a guest's stdout and stderr.
//!
//! Keeps the first `limit` bytes of each stream and marks the rest as
//! truncated; the guest never sees an error for writing too much.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wisp_core::LogCapture;

/// Largest single write a guest is offered at once.
const WRITE_BUDGET: usize = 64 * 1024;

#[derive(Debug, Default)]
struct Buffer {
    capture: LogCapture,
    limit: usize,
}

impl Buffer {
    fn push(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.capture.bytes.len());
        let keep = room.min(bytes.len());
        self.capture.bytes.extend_from_slice(&bytes[..keep]);
        if keep < bytes.len() {
            self.capture.truncated = true;
        }
    }
}

/// One captured stream; clones share the same buffer.
#[derive(Clone, Debug)]
pub struct Capture(Arc<Mutex<Buffer>>);

impl Capture {
    /// A capture that keeps at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Capture(Arc::new(Mutex::new(Buffer {
            capture: LogCapture::default(),
            limit,
        })))
    }

    /// Takes what was captured so far.
    pub fn take(&self) -> LogCapture {
        std::mem::take(&mut self.lock().capture)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        // A poisoned lock only means another writer panicked mid-push; the
        // bytes are still a valid prefix.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl IsTerminal for Capture {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Capture {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Capture {
    async fn ready(&mut self) {}
}

impl OutputStream for Capture {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.lock().push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(WRITE_BUDGET)
    }
}

impl AsyncWrite for Capture {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.lock().push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_prefix_and_marks_truncation() {
        let mut c = Capture::new(5);
        c.write(Bytes::from_static(b"abc")).unwrap();
        let mut c2 = Capture::new(5);
        c2.write(Bytes::from_static(b"abc")).unwrap();
        c2.write(Bytes::from_static(b"defg")).unwrap();
        let got = c2.take();
        assert_eq!(got.bytes, b"abcde");
        assert!(got.truncated);
        c.write(Bytes::from_static(b"de")).unwrap();
        let got = c.take();
        assert_eq!(got.bytes, b"abcde");
        assert!(!got.truncated);
    }
}
