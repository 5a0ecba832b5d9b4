//! JSON bodies for the answers hyper writes itself. When a request cannot be parsed (a request
//! line over hyper's fixed 64 KiB URI limit, headers over its buffer, malformed HTTP), hyper
//! answers 414/431/400 with an empty body and closes, before any handler runs. This connection
//! wrapper recognises such an answer on its way out (a response head for one of those statuses
//! with `content-length: 0`: every answer of the daemon's own handlers has a JSON body) and sends
//! the same status with the API's `{"error": {"kind", "message"}}` body instead.
//!
//! This depends on hyper's wire format (its status line and `content-length: 0`); the locked hyper
//! (1.12) is pinned by `tests/it/daemon_bad_input.rs` ("URL over 64 KiB": a real 414 through the
//! daemon must carry the JSON body), which fails when an upgrade changes what hyper writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The JSON answer replacing hyper's empty one, if `head` is one of hyper's parse-error answers.
fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let (status, reason, kind, message) = if head.starts_with(b"HTTP/1.1 414 ") {
        (414, "URI Too Long", "uri_too_long", "the request line is longer than 64 KiB; send queries in the JSON body (POST /v1/detect with {\"queries\": [...]})")
    } else if head.starts_with(b"HTTP/1.1 431 ") {
        (
            431,
            "Request Header Fields Too Large",
            "headers_too_large",
            "the request head is too large",
        )
    } else if head.starts_with(b"HTTP/1.1 400 ") {
        (400, "Bad Request", "bad_request", "malformed HTTP request")
    } else {
        return None;
    };
    let lower = head.to_ascii_lowercase();
    let contains = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if !contains(b"content-length: 0\r\n") || contains(b"content-type:") {
        return None;
    }
    let body = super::error::ApiError::new(status, kind, message).body();
    Some(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

/// A connection whose parse-error answers from hyper carry a JSON body.
pub(super) struct JsonParseErrors<S> {
    inner: S,
    /// A replacement being written: the bytes, how many are out, and the length of hyper's write
    /// it stands for (reported as written once the replacement is out).
    pending: Option<(Vec<u8>, usize, usize)>,
}

impl<S> JsonParseErrors<S> {
    pub(super) fn new(inner: S) -> Self {
        JsonParseErrors {
            inner,
            pending: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonParseErrors<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonParseErrors<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.pending.is_none() {
            match replacement(buf) {
                Some(bytes) => this.pending = Some((bytes, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        // Write the replacement out; hyper retries the same buffer while this is pending.
        while let Some((bytes, done, stands_for)) = &mut this.pending {
            if *done == bytes.len() {
                let n = *stands_for;
                this.pending = None;
                return Poll::Ready(Ok(n));
            }
            match Pin::new(&mut this.inner).poll_write(cx, &bytes[*done..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => *done += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(0))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    /// Not vectored: hyper then writes a response head as one buffer, which `replacement` reads.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hypers_empty_parse_error_answers_are_replaced() {
        let hyper414 = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let r = String::from_utf8(replacement(hyper414).expect("replaced")).expect("utf8");
        assert!(r.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{r}");
        let body = r.split("\r\n\r\n").nth(1).expect("body");
        let j: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(j["error"]["kind"], "uri_too_long");
        assert!(r.contains(&format!("content-length: {}\r\n", body.len())));
        assert!(replacement(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n"
        )
        .is_some());
        // The daemon's own 400s carry a JSON body and a content type: untouched.
        assert!(replacement(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 57\r\n\r\n"
        )
        .is_none());
        assert!(replacement(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(replacement(b"{\"detections\": []}").is_none());
    }

    #[tokio::test]
    async fn a_replacement_is_written_whole_and_reported_as_hypers_write() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (a, mut b) = tokio::io::duplex(16); // small: the replacement takes several writes
        let mut w = JsonParseErrors::new(a);
        let head = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n";
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            b.read_to_end(&mut out).await.expect("read");
            out
        });
        w.write_all(head).await.expect("write");
        w.shutdown().await.expect("shutdown");
        drop(w);
        let out = String::from_utf8(reader.await.expect("join")).expect("utf8");
        assert!(out.starts_with("HTTP/1.1 414 URI Too Long\r\ncontent-type: application/json\r\n"));
        assert!(out.ends_with("}}"), "{out}");
    }
}
