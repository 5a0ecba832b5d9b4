//! Multi-object tracking of a stream's detections: owns track ids and their motion state.
//!
//! ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box",
//! ECCV 2022) with two additions from OC-SORT (Cao et al., "Observation-Centric SORT", CVPR 2023)
//! and a gate for OWLv2's patch-sized box jitter. Every track carries a constant-velocity Kalman
//! filter on `(cx, cy, w/h, h)` (SORT's state, ByteTrack's noise model). Per update, tracks are
//! predicted to the new stream time, then:
//! 1. high-score detections are matched to all tracks, low-score ones to the tracks still
//!    unmatched (ByteTrack's two stages), each by [`similarity`] to the predicted box: IoU at or
//!    above `match_iou` first, then (when the best box jumped to a neighbouring patch and the IoU
//!    fell) centres within `match_distance` box sizes of each other with sizes within a factor 2;
//! 2. high-score detections left are matched to the tracks left by similarity to each track's
//!    last *observed* box (OC-SORT's observation-centric recovery: a coasting prediction drifts);
//!    a track found again after misses restarts its filter at the observation, with the velocity
//!    of its observations across the gap (OC-SORT's re-update);
//! 3. a high-score detection left that overlaps a detection matched in this frame to a track of
//!    its class (IoU above `duplicate_iou`, or mostly inside it) is a duplicate of that object (no
//!    id); the others start tracks. Tracks unmatched for longer than the timeout are dropped.
//!
//! Detections only match tracks of their own class.

use crate::postprocess::{box_area, intersection, iou};

/// Length of the nominal frame that the filter's velocities and noises are expressed in.
const FRAME_MS: f64 = 33.3;
/// A box mostly inside another of its class (this share of its area) is a duplicate of it.
const DUPLICATE_INSIDE: f32 = 0.7;
/// Sizes (sqrt of the area) of two boxes further apart than this factor never match by distance.
const MAX_SIZE_RATIO: f32 = 2.0;

/// Tracker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TrackerConfig {
    /// Detections at or above this score start tracks and match first (ByteTrack's high stage).
    pub high: f32,
    /// Detections in [low, high) only continue existing tracks (second stage); below low: ignored.
    pub low: f32,
    /// IoU between a track's predicted box and a detection at or above which they match.
    pub match_iou: f32,
    /// Under `match_iou`, a detection whose centre is within this many box sizes (sqrt of the
    /// area, the larger of the two) of the track's still matches, after every IoU match; 0: off.
    pub match_distance: f32,
    /// A high-score detection overlapping one already given to a track of its class by more than
    /// this IoU is a duplicate of that object: it gets no id and starts no track. 1: off.
    pub duplicate_iou: f32,
    /// A track not matched for longer than this (milliseconds of stream time) is removed.
    pub lost_timeout_ms: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            high: 0.1,
            low: 0.05,
            match_iou: 0.3,
            match_distance: 1.0,
            duplicate_iou: 0.5,
            lost_timeout_ms: 1000,
        }
    }
}

/// One detection given to the tracker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TrackInput {
    pub class: usize,
    pub score: f32,
    pub bbox: [f32; 4],
}

/// How well a detection fits a track's box, ordered: every IoU match ranks above every distance
/// match. `None`: no match.
fn similarity(cfg: &TrackerConfig, track: &[f32; 4], det: &[f32; 4]) -> Option<(u8, f32)> {
    let v = iou(track, det);
    if v.is_finite() && v > 0.0 && v >= cfg.match_iou {
        return Some((1, v));
    }
    if cfg.match_distance <= 0.0 {
        return None;
    }
    let (st, sd) = (box_area(track).sqrt(), box_area(det).sqrt());
    if !(st > 0.0 && sd > 0.0) || st.max(sd) > MAX_SIZE_RATIO * st.min(sd) {
        return None;
    }
    let centre = |b: &[f32; 4]| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0];
    let ([xt, yt], [xd, yd]) = (centre(track), centre(det));
    let d = (xt - xd).hypot(yt - yd) / st.max(sd);
    (d.is_finite() && d <= cfg.match_distance).then_some((0, -d))
}

/// Whether `b` duplicates `kept` (a box of the same class already given to a track).
fn duplicates(cfg: &TrackerConfig, b: &[f32; 4], kept: &[f32; 4]) -> bool {
    if cfg.duplicate_iou.is_nan() || cfg.duplicate_iou >= 1.0 {
        return false;
    }
    let inside = intersection(b, kept) / box_area(b);
    iou(b, kept) > cfg.duplicate_iou || (inside.is_finite() && inside >= DUPLICATE_INSIDE)
}

pub(crate) mod bench;
mod kalman;
use kalman::Kalman;

/// `[x0, y0, x1, y1]` → `[cx, cy, w/h, h]`, or `None` for a non-finite or empty box.
fn to_xyah(b: &[f32; 4]) -> Option<[f64; 4]> {
    let [x0, y0, x1, y1] = b.map(f64::from);
    let (w, h) = (x1 - x0, y1 - y0);
    let z = [x0 + w / 2.0, y0 + h / 2.0, w / h, h];
    (w > 0.0 && h > 0.0 && z.iter().all(|v| v.is_finite())).then_some(z)
}

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    class: usize,
    kf: Kalman,
    /// Stream time of the last match.
    last_seen: u64,
    /// The last matched detection: its box, and as the filter measures it.
    last_box: [f32; 4],
    last_z: [f64; 4],
    /// Matched in the latest update (ByteTrack's "tracked" vs "lost").
    tracked: bool,
}

/// ByteTrack-style tracker of one stream.
#[derive(Debug, Clone)]
pub(crate) struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<Track>,
    next_id: u64,
    last_t: Option<u64>,
}

impl Tracker {
    pub(crate) fn new(cfg: TrackerConfig) -> Self {
        Tracker {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
            last_t: None,
        }
    }

    /// Advances to stream time `t_ms` (monotonic, non-decreasing; equal times allowed) and associates `dets`.
    /// Returns, for each input detection in order, its track id (`Some`), or `None` for a low-score detection
    /// that matched no track, a duplicate of a tracked object (module doc) and any detection below
    /// `low`. Ids start at 1 and are never reused.
    ///
    /// Detections with a non-finite or empty box (zero or negative width/height) never match and
    /// never start tracks (`None`). A time earlier than the previous one counts as no motion and
    /// restarts the lost clocks from `t_ms`.
    pub(crate) fn update(&mut self, t_ms: u64, dets: &[TrackInput]) -> Vec<Option<u64>> {
        self.advance(t_ms);
        let meas: Vec<Option<[f64; 4]>> = dets.iter().map(|d| to_xyah(&d.bbox)).collect();
        let (mut high, mut low) = (Vec::new(), Vec::new());
        for (j, d) in dets.iter().enumerate().filter(|(j, _)| meas[*j].is_some()) {
            if d.score >= self.cfg.high {
                high.push(j);
            } else if d.score >= self.cfg.low {
                low.push(j);
            }
        }
        let mut out = vec![None; dets.len()];
        let mut used = vec![false; self.tracks.len()];
        let predicted: Vec<[f32; 4]> = self.tracks.iter().map(|tr| tr.kf.bbox()).collect();
        let observed: Vec<[f32; 4]> = self.tracks.iter().map(|tr| tr.last_box).collect();
        for (boxes, stage) in [(&predicted, &high), (&predicted, &low), (&observed, &high)] {
            for (ti, j) in self.greedy_pairs(boxes, &used, stage, dets, &out) {
                if let Some(z) = meas[j] {
                    self.observe(ti, z, dets[j].bbox, t_ms);
                    used[ti] = true;
                    out[j] = Some(self.tracks[ti].id);
                }
            }
        }
        for (tr, &u) in self.tracks.iter_mut().zip(&used) {
            tr.tracked = u;
        }
        self.births(t_ms, &mut high, dets, &meas, &mut out);
        out
    }

    /// Moves the clock to `t_ms`: drops the tracks lost for longer than the timeout and predicts
    /// the others.
    fn advance(&mut self, t_ms: u64) {
        let last = self.last_t.unwrap_or(t_ms);
        if t_ms < last {
            self.tracks
                .iter_mut()
                .for_each(|tr| tr.last_seen = tr.last_seen.min(t_ms));
        }
        self.last_t = Some(t_ms);
        let dt = t_ms.saturating_sub(last) as f64 / FRAME_MS;
        let timeout = self.cfg.lost_timeout_ms;
        self.tracks
            .retain(|tr| t_ms.saturating_sub(tr.last_seen) <= timeout);
        for tr in &mut self.tracks {
            if !tr.tracked {
                tr.kf.mean[7] = 0.0; // As ByteTrack: a lost track keeps its size.
            }
            tr.kf.predict(dt);
        }
    }

    /// Gives track `ti` its detection `z` (`bbox`) at `t_ms`. A track found again after misses
    /// restarts its filter at `z`, moving as its observations did across the gap (OC-SORT).
    fn observe(&mut self, ti: usize, z: [f64; 4], bbox: [f32; 4], t_ms: u64) {
        let tr = &mut self.tracks[ti];
        if tr.tracked {
            if !tr.kf.update(z) {
                tr.kf = Kalman::new(z);
            }
        } else {
            let gap = t_ms.saturating_sub(tr.last_seen) as f64 / FRAME_MS;
            let mut kf = Kalman::new(z);
            if gap > 0.0 {
                kf.mean[4] = (z[0] - tr.last_z[0]) / gap;
                kf.mean[5] = (z[1] - tr.last_z[1]) / gap;
            }
            tr.kf = kf;
        }
        tr.last_seen = t_ms;
        tr.last_box = bbox;
        tr.last_z = z;
    }

    /// Starts tracks for the high-score detections still without one, by descending score,
    /// except duplicates of a detection already given to a track of their class.
    fn births(
        &mut self,
        t_ms: u64,
        high: &mut [usize],
        dets: &[TrackInput],
        meas: &[Option<[f64; 4]>],
        out: &mut [Option<u64>],
    ) {
        high.sort_by(|&a, &b| dets[b].score.total_cmp(&dets[a].score).then(a.cmp(&b)));
        for &j in high.iter() {
            let (None, Some(z)) = (out[j], meas[j]) else {
                continue;
            };
            let duplicate = (0..dets.len()).any(|k| {
                out[k].is_some()
                    && dets[k].class == dets[j].class
                    && duplicates(&self.cfg, &dets[j].bbox, &dets[k].bbox)
            });
            if duplicate {
                continue;
            }
            out[j] = Some(self.next_id);
            self.tracks.push(Track {
                id: self.next_id,
                class: dets[j].class,
                kf: Kalman::new(z),
                last_seen: t_ms,
                last_box: dets[j].bbox,
                last_z: z,
                tracked: true,
            });
            self.next_id += 1;
        }
    }

    /// Greedy matching of free tracks (their `boxes`) to the `cand` detections not yet `taken`:
    /// all same-class pairs with a [`similarity`], best first (every IoU match before every
    /// distance match), ties by lower track index then lower detection index. Not Hungarian: with
    /// a handful of objects per class, conflicts are rare and greedy gives the same answer in
    /// practice, at O(n log n) with no solver.
    fn greedy_pairs(
        &self,
        boxes: &[[f32; 4]],
        used: &[bool],
        cand: &[usize],
        dets: &[TrackInput],
        taken: &[Option<u64>],
    ) -> Vec<(usize, usize)> {
        let mut pairs: Vec<((u8, f32), usize, usize)> = Vec::new();
        for (ti, (tr, tb)) in self.tracks.iter().zip(boxes).enumerate() {
            if used[ti] {
                continue;
            }
            for &j in cand {
                if taken[j].is_none() && dets[j].class == tr.class {
                    if let Some(sim) = similarity(&self.cfg, tb, &dets[j].bbox) {
                        pairs.push((sim, ti, j));
                    }
                }
            }
        }
        pairs.sort_by(|a, b| {
            (b.0 .0.cmp(&a.0 .0))
                .then(b.0 .1.total_cmp(&a.0 .1))
                .then(a.1.cmp(&b.1))
                .then(a.2.cmp(&b.2))
        });
        let (mut t_done, mut d_done) = (vec![false; boxes.len()], vec![false; dets.len()]);
        let mut out = Vec::new();
        for (_, ti, j) in pairs {
            if !t_done[ti] && !d_done[j] {
                t_done[ti] = true;
                d_done[j] = true;
                out.push((ti, j));
            }
        }
        out
    }

    /// Tracks currently alive (matched within lost_timeout_ms).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.tracks.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }

    /// Forgets every track (a stream reconnected); ids keep increasing.
    pub(crate) fn reset(&mut self) {
        self.tracks.clear();
        self.last_t = None;
    }
}

#[cfg(test)]
mod tests;
