//! Request bodies that are read to the end even when a handler refuses the
//! request before reading them, and that fail when the client pauses
//! longer than `http.timeouts.body` (a slow or stalled client cannot hold
//! an upload, and what it pins, for ever).
//!
//! When a server answers early and closes with request bytes still unread,
//! TCP resets the connection and the client often never sees the answer
//! (RFC 9112 §9.6) — a 413 or 405 turns into "broken pipe". Wrapping every
//! body in [`DrainOnDrop`] means an unfinished body, when dropped, is handed
//! to a background task that reads and discards the rest (bounded), so the
//! response arrives and the connection can even be reused.

use axum::body::Body;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes read and discarded after an early answer; beyond that the
/// connection is closed instead.
const MAX_DRAIN: u64 = 64 * 1024 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(30);

pub struct DrainOnDrop {
    inner: Option<axum::body::BodyDataStream>,
    done: bool,
    /// Longest wait for the next bytes.
    pause: Duration,
    /// Runs while a read waits; reset by every chunk.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Wraps a request body so that it is drained if dropped unfinished and
/// fails once the client sent nothing for `pause`.
pub fn drain_on_drop(body: Body, pause: Duration) -> Body {
    Body::from_stream(DrainOnDrop { inner: Some(body.into_data_stream()), done: false, pause, timer: None })
}

impl Stream for DrainOnDrop {
    type Item = Result<Bytes, axum::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        let r = inner.poll_next_unpin(cx);
        match &r {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.done = true,
            Poll::Ready(Some(Ok(_))) => self.timer = None,
            Poll::Pending => {
                let pause = self.pause;
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(pause)));
                if timer.as_mut().poll(cx).is_ready() {
                    // Not drained: the client is not sending.
                    self.done = true;
                    self.inner = None;
                    let e = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client sent nothing of the request body for {pause:?} (http.timeouts.body)"),
                    );
                    return Poll::Ready(Some(Err(axum::Error::new(e))));
                }
            }
        }
        r
    }
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let Some(mut rest) = self.inner.take() else { return };
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        handle.spawn(async move {
            let mut read = 0u64;
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while let Some(Ok(chunk)) = rest.next().await {
                    read += chunk.len() as u64;
                    if read > MAX_DRAIN {
                        break;
                    }
                }
            })
            .await;
        });
    }
}
