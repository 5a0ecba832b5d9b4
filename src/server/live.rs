//! `GET /v1/streams/{name}/live.mjpeg[?fps=F]`: a stream's processed frames with their boxes,
//! labels, track ids, zones and lines drawn (the snapshot's drawing), as `multipart/x-mixed-replace`
//! JPEG parts, which a browser's `<img>` shows live. Frames are drawn only while someone watches,
//! each at most once and at most `fps` a second (default [`DEFAULT_FPS`], at most [`MAX_FPS`]); a
//! watcher counts as an events follower (`max_followers`). The body ends when the stream is deleted
//! or the daemon stops.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::Response;
use tokio::sync::mpsc;

use super::body::{Body, Guard};
use super::error::ApiError;
use super::request::{blocking, follower_permit, let_go, query_pairs, send_line, Resp};
use super::state::AppState;
use crate::video::draw::{self, DrawError};
use crate::video::manager::StreamManager;
use crate::video::stream::Snapshot;

/// Frames a second when `fps` is not given: enough to watch, cheap to draw.
pub(crate) const DEFAULT_FPS: f64 = 5.0;
/// The most frames a second a watcher may ask for.
pub(crate) const MAX_FPS: f64 = 30.0;
/// The multipart boundary between frames.
const BOUNDARY: &str = "ivframe";
/// JPEG quality of the parts (the snapshot's).
const QUALITY: u8 = 85;

/// The snapshot drawn (boxes, captions, zones, lines) or `raw`, as JPEG.
pub(crate) fn render(snap: &Snapshot, raw: bool) -> Result<Vec<u8>, DrawError> {
    let (w, h) = (snap.rgb.width, snap.rgb.height);
    if raw {
        return draw::encode_jpeg(w, h, &snap.rgb.data, QUALITY);
    }
    let mut data = snap.rgb.data.clone();
    draw::overlay(w, h, &mut data, &snap.shapes, &snap.annotations)?;
    draw::annotate(w, h, &mut data, &snap.annotations)?;
    draw::encode_jpeg(w, h, &data, QUALITY)
}

/// The `fps` parameter: a number in (0, [`MAX_FPS`]].
fn parse_fps(req: &Parts) -> Result<f64, ApiError> {
    let mut fps = DEFAULT_FPS;
    for (k, v) in query_pairs(req.uri.query())? {
        match k.as_str() {
            "fps" => {
                fps = v
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite() && *f > 0.0 && *f <= MAX_FPS)
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "invalid_parameter",
                            format!("fps={v:?} is not a number in (0, {MAX_FPS}]"),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "invalid_parameter",
                    format!("unknown parameter {other:?}"),
                ))
            }
        }
    }
    Ok(fps)
}

/// Starts a live view of stream `name`.
pub(crate) fn live(
    req: &Parts,
    st: &Arc<AppState>,
    m: &Arc<StreamManager>,
    name: &str,
) -> Result<Resp, ApiError> {
    let fps = parse_fps(req)?;
    if m.get(name).is_none() {
        return Err(ApiError::new(
            404,
            "not_found",
            format!("no stream named {name:?}"),
        ));
    }
    let permit = follower_permit(st)?;
    let (tx, rx) = mpsc::channel(2);
    let guard = Guard::default();
    let watcher = Watcher {
        tx,
        manager: m.clone(),
        name: name.to_string(),
        period: Duration::from_secs_f64(1.0 / fps),
        guard: guard.clone(),
        _permit: permit,
    };
    tokio::spawn(watcher.run());
    let mut r = Response::new(Body::stream(rx, guard));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("multipart/x-mixed-replace; boundary=ivframe"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// One watcher's feeder.
struct Watcher {
    tx: mpsc::Sender<Bytes>,
    manager: Arc<StreamManager>,
    name: String,
    period: Duration,
    guard: Guard,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Watcher {
    async fn run(self) {
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_frame = None;
        loop {
            tokio::select! {
                biased;
                _ = self.manager.stopping().cancelled() => return,
                _ = self.tx.closed() => return,
                _ = tick.tick() => {}
            }
            // A deleted (or replaced) stream ends the view.
            let Some(shared) = self.manager.get(&self.name) else {
                return;
            };
            let Some(snap) = shared.snapshot() else {
                continue;
            };
            if last_frame == Some(snap.frame) {
                continue;
            }
            let first = last_frame.is_none();
            last_frame = Some(snap.frame);
            let jpeg = match blocking("live frame", move || render(&snap, false)).await {
                Ok(Ok(j)) => j,
                Ok(Err(e)) => {
                    tracing::warn!(stream = %self.name, error = %e, "cannot draw a live frame");
                    continue;
                }
                Err(_) => return,
            };
            if !send_line(&self.tx, part(&jpeg, first)).await {
                return let_go(&self.guard);
            }
        }
    }
}

/// One multipart part: its headers, the JPEG and the boundary after it (the first part starts
/// with a boundary too). The boundary is sent with the frame it ends, not with the next one: a
/// browser shows a part only once it sees the boundary that closes it.
fn part(jpeg: &[u8], first: bool) -> Bytes {
    let open = if first {
        format!("--{BOUNDARY}\r\n")
    } else {
        String::new()
    };
    let mut b = format!(
        "{open}Content-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
        jpeg.len()
    )
    .into_bytes();
    b.extend_from_slice(jpeg);
    b.extend_from_slice(format!("\r\n--{BOUNDARY}\r\n").as_bytes());
    Bytes::from(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_carries_its_length_the_jpeg_and_the_boundary_that_ends_it() {
        let jpeg = [0xFF, 0xD8, 1, 2, 0xFF, 0xD9];
        let head = b"Content-Type: image/jpeg\r\nContent-Length: 6\r\n\r\n";
        let first = part(&jpeg, true);
        assert_eq!(&first[..11], b"--ivframe\r\n");
        assert_eq!(&first[11..], &part(&jpeg, false)[..]);
        let p = part(&jpeg, false);
        assert_eq!(&p[..head.len()], head);
        assert_eq!(&p[head.len()..head.len() + 6], &jpeg);
        assert_eq!(&p[head.len() + 6..], b"\r\n--ivframe\r\n");
    }
}
