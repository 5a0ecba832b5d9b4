//! Response bodies: a whole body (`Full`) for every JSON, text or image answer, or a stream of
//! NDJSON lines fed by a channel (stream events). A streamed body can hold its connection's
//! "request in progress" guard, so a follower is not taken for an idle connection; its feeder can
//! let go of that guard (a follower that stopped reading), making the connection evictable again.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};
use tokio::sync::mpsc;

/// A response body.
pub(crate) enum Body {
    Full(Full<Bytes>),
    Stream {
        rx: mpsc::Receiver<Bytes>,
        /// The connection's in-flight mark: dropped with the body, or earlier by the feeder.
        guard: Guard,
    },
}

/// A slot for a connection's in-flight mark, shared by a streamed body and its feeder.
pub(crate) type Guard = Arc<Mutex<Option<Box<dyn Send + Sync>>>>;

impl Body {
    pub(crate) fn full(b: impl Into<Bytes>) -> Self {
        Body::Full(Full::new(b.into()))
    }

    /// A body that yields what `rx` receives, and ends when every sender is gone; `guard` will
    /// hold the connection's in-flight mark.
    pub(crate) fn stream(rx: mpsc::Receiver<Bytes>, guard: Guard) -> Self {
        Body::Stream { rx, guard }
    }

    /// Keeps `g` as long as a streamed body (or until its feeder lets go); a whole body drops it
    /// at once.
    pub(crate) fn hold(&mut self, g: impl Send + Sync + 'static) {
        if let Body::Stream { guard, .. } = self {
            if let Ok(mut slot) = guard.lock() {
                *slot = Some(Box::new(g));
            }
        }
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            Body::Full(f) => Pin::new(f).poll_frame(cx),
            Body::Stream { rx, .. } => rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(f) => f.is_end_stream(),
            Body::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(f) => f.size_hint(),
            Body::Stream { .. } => SizeHint::default(),
        }
    }
}
