//! Multi-object tracking of a stream's detections: owns track ids and their motion state.
//!
//! ByteTrack (Zhang et al., "ByteTrack: Multi-Object Tracking by Associating Every Detection Box",
//! ECCV 2022): every track carries a constant-velocity Kalman filter on `(cx, cy, w/h, h)` (SORT's
//! state, ByteTrack's noise model). Per update, tracks are predicted to the new stream time, then
//! high-score detections are matched to all tracks by IoU of the predicted box, low-score ones to
//! the tracks still unmatched; unmatched high-score detections start tracks, and tracks unmatched
//! for longer than the timeout are dropped. Detections only match tracks of their own class.

use crate::postprocess::iou;

/// Length of the nominal frame that the filter's velocities and noises are expressed in.
const FRAME_MS: f64 = 33.3;
/// ByteTrack's `std_weight_position`.
const STD_POS: f64 = 1.0 / 20.0;
/// ByteTrack's `std_weight_velocity`.
const STD_VEL: f64 = 1.0 / 160.0;
/// Floor on the height that scales the noises (keeps them positive on degenerate predictions).
const MIN_NOISE_H: f64 = 1e-6;

/// Tracker settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TrackerConfig {
    /// Detections at or above this score start tracks and match first (ByteTrack's high stage).
    pub high: f32,
    /// Detections in [low, high) only continue existing tracks (second stage); below low: ignored.
    pub low: f32,
    /// Minimum IoU between a track's predicted box and a detection to match them.
    pub match_iou: f32,
    /// A track not matched for longer than this (milliseconds of stream time) is removed.
    pub lost_timeout_ms: u64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            high: 0.1,
            low: 0.05,
            match_iou: 0.3,
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

type Mat8 = [[f64; 8]; 8];

/// Constant-velocity Kalman filter on `[cx, cy, a, h, vcx, vcy, va, vh]`, measuring `[cx, cy, a, h]`.
#[derive(Debug, Clone)]
struct Kalman {
    mean: [f64; 8],
    cov: Mat8,
}

fn all_finite(mean: &[f64; 8], cov: &Mat8) -> bool {
    mean.iter()
        .chain(cov.iter().flatten())
        .all(|x| x.is_finite())
}

/// Height that scales the noises: positive even for a NaN or degenerate prediction.
fn noise_h(h: f64) -> f64 {
    h.abs().max(MIN_NOISE_H) // `max` ignores NaN.
}

// Index loops read closest to the matrix algebra they implement.
#[allow(clippy::needless_range_loop)]
impl Kalman {
    fn new(z: [f64; 4]) -> Self {
        let h = noise_h(z[3]);
        let (p, v) = (2.0 * STD_POS * h, 10.0 * STD_VEL * h);
        let std = [p, p, 1e-2, p, v, v, 1e-5, v];
        let mut cov = [[0.0; 8]; 8];
        for (i, s) in std.iter().enumerate() {
            cov[i][i] = s * s;
        }
        let mut mean = [0.0; 8];
        mean[..4].copy_from_slice(&z);
        Kalman { mean, cov }
    }

    /// Advances by `dt` nominal frames: `x = F x`, `P = F P Fᵀ + Q·dt`. `dt = 0` changes nothing.
    fn predict(&mut self, dt: f64) {
        if dt <= 0.0 || !dt.is_finite() {
            return;
        }
        let h = noise_h(self.mean[3]);
        let (p, v) = (STD_POS * h, STD_VEL * h);
        let q = [p, p, 1e-2, p, v, v, 1e-5, v];
        for i in 0..4 {
            self.mean[i] += dt * self.mean[i + 4];
        }
        // F P (row i < 4 gains dt · row i+4), then (F P) Fᵀ (column j < 4 gains dt · column j+4).
        for i in 0..4 {
            for j in 0..8 {
                self.cov[i][j] += dt * self.cov[i + 4][j];
            }
        }
        for row in self.cov.iter_mut() {
            for j in 0..4 {
                row[j] += dt * row[j + 4];
            }
        }
        for (i, s) in q.iter().enumerate() {
            self.cov[i][i] += s * s * dt;
        }
    }

    /// Kalman update with measurement `z`: `S = H P Hᵀ + R`, `K = P Hᵀ S⁻¹`, `P = (I − K H) P`.
    /// Returns false (state untouched) if `S` is singular or the result is not finite.
    fn update(&mut self, z: [f64; 4]) -> bool {
        let h = noise_h(self.mean[3]);
        let r = [STD_POS * h, STD_POS * h, 1e-1, STD_POS * h];
        let mut s = [[0.0; 4]; 4];
        let mut hp = [[0.0; 8]; 4]; // H P: the first four rows of P.
        for i in 0..4 {
            s[i][..4].copy_from_slice(&self.cov[i][..4]);
            s[i][i] += r[i] * r[i];
            hp[i] = self.cov[i];
        }
        // S symmetric, so K Sᵀ = P Hᵀ  ⇔  S Kᵀ = H P.
        let Some(kt) = solve4(s, hp) else {
            return false;
        };
        let mut mean = self.mean;
        let mut cov = self.cov;
        for i in 0..8 {
            for k in 0..4 {
                mean[i] += kt[k][i] * (z[k] - self.mean[k]);
                for j in 0..8 {
                    cov[i][j] -= kt[k][i] * hp[k][j];
                }
            }
        }
        for i in 0..8 {
            for j in 0..i {
                let avg = 0.5 * (cov[i][j] + cov[j][i]);
                cov[i][j] = avg;
                cov[j][i] = avg;
            }
        }
        if !all_finite(&mean, &cov) {
            return false;
        }
        self.mean = mean;
        self.cov = cov;
        true
    }

    fn bbox(&self) -> [f32; 4] {
        let [cx, cy, a, h] = [self.mean[0], self.mean[1], self.mean[2], self.mean[3]];
        let (w2, h2) = (a * h / 2.0, h / 2.0);
        [cx - w2, cy - h2, cx + w2, cy + h2].map(|v| v as f32)
    }
}

/// Solves `S X = B` for a 4x4 `S` by Gauss-Jordan elimination with partial pivoting; `None` when
/// `S` is (numerically) singular or not finite.
#[allow(clippy::needless_range_loop)]
fn solve4(mut s: [[f64; 4]; 4], mut b: [[f64; 8]; 4]) -> Option<[[f64; 8]; 4]> {
    if s.iter().flatten().any(|x| !x.is_finite()) {
        return None;
    }
    let tol = s.iter().flatten().fold(0.0f64, |m, x| m.max(x.abs())) * 1e-13;
    for col in 0..4 {
        let piv = (col..4).max_by(|&x, &y| s[x][col].abs().total_cmp(&s[y][col].abs()))?;
        if s[piv][col].abs() <= tol {
            return None;
        }
        s.swap(col, piv);
        b.swap(col, piv);
        let d = s[col][col];
        for x in s[col].iter_mut() {
            *x /= d;
        }
        for x in b[col].iter_mut() {
            *x /= d;
        }
        for row in 0..4 {
            let f = s[row][col];
            if row == col {
                continue;
            }
            for j in 0..4 {
                s[row][j] -= f * s[col][j];
            }
            for j in 0..8 {
                b[row][j] -= f * b[col][j];
            }
        }
    }
    Some(b)
}

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
    /// that matched no track (and any detection below `low`). Ids start at 1 and are never reused.
    ///
    /// Detections with a non-finite or empty box (zero or negative width/height) never match and
    /// never start tracks (`None`). A time earlier than the previous one counts as no motion and
    /// restarts the lost clocks from `t_ms`.
    pub(crate) fn update(&mut self, t_ms: u64, dets: &[TrackInput]) -> Vec<Option<u64>> {
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
        let pred: Vec<[f32; 4]> = self.tracks.iter().map(|tr| tr.kf.bbox()).collect();
        let meas: Vec<Option<[f64; 4]>> = dets.iter().map(|d| to_xyah(&d.bbox)).collect();
        let (mut high_idx, mut low_idx) = (Vec::new(), Vec::new());
        for (j, d) in dets.iter().enumerate().filter(|(j, _)| meas[*j].is_some()) {
            if d.score >= self.cfg.high {
                high_idx.push(j);
            } else if d.score >= self.cfg.low {
                low_idx.push(j);
            }
        }
        let mut out = vec![None; dets.len()];
        let mut used = vec![false; self.tracks.len()];
        for stage in [&high_idx, &low_idx] {
            for (ti, j) in self.greedy_pairs(&pred, &used, stage, dets) {
                let Some(z) = meas[j] else { continue };
                let tr = &mut self.tracks[ti];
                if !tr.kf.update(z) {
                    tr.kf = Kalman::new(z);
                }
                tr.last_seen = t_ms;
                used[ti] = true;
                out[j] = Some(tr.id);
            }
        }
        for (tr, &u) in self.tracks.iter_mut().zip(&used) {
            tr.tracked = u;
        }
        for &j in &high_idx {
            if let (None, Some(z)) = (out[j], meas[j]) {
                out[j] = Some(self.next_id);
                self.tracks.push(Track {
                    id: self.next_id,
                    class: dets[j].class,
                    kf: Kalman::new(z),
                    last_seen: t_ms,
                    tracked: true,
                });
                self.next_id += 1;
            }
        }
        out
    }

    /// Greedy matching of free tracks to `cand` detections: all same-class pairs with IoU >=
    /// `match_iou` (and > 0), taken by descending IoU, ties by lower track index then lower
    /// detection index. Not Hungarian: with a handful of objects per class and a high IoU gate,
    /// conflicts are rare and greedy gives the same answer in practice, at O(n log n) with no solver.
    fn greedy_pairs(
        &self,
        pred: &[[f32; 4]],
        used: &[bool],
        cand: &[usize],
        dets: &[TrackInput],
    ) -> Vec<(usize, usize)> {
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (ti, (tr, pb)) in self.tracks.iter().zip(pred).enumerate() {
            if used[ti] {
                continue;
            }
            for &j in cand.iter().filter(|&&j| dets[j].class == tr.class) {
                let v = iou(pb, &dets[j].bbox);
                if v.is_finite() && v > 0.0 && v >= self.cfg.match_iou {
                    pairs.push((v, ti, j));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let (mut t_done, mut d_done) = (vec![false; pred.len()], vec![false; dets.len()]);
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
mod tests {
    use super::*;

    fn d(class: usize, score: f32, bbox: [f32; 4]) -> TrackInput {
        TrackInput { class, score, bbox }
    }
    /// A `w` x `h` box with its top-left corner at (x, y).
    fn bx(x: f32, y: f32, w: f32, h: f32) -> [f32; 4] {
        [x, y, x + w, y + h]
    }
    /// A high-score class-0 detection.
    fn hi(bbox: [f32; 4]) -> TrackInput {
        d(0, 0.9, bbox)
    }
    fn tracker() -> Tracker {
        Tracker::new(TrackerConfig::default())
    }
    /// `update`, with `None` written as 0.
    fn ids(t: &mut Tracker, ms: u64, dets: &[TrackInput]) -> Vec<u64> {
        t.update(ms, dets).iter().map(|i| i.unwrap_or(0)).collect()
    }

    #[test]
    fn identical_frames_keep_ids_and_classes_stay_apart() {
        let mut t = tracker();
        let b = bx(10.0, 10.0, 40.0, 80.0);
        // The third object has the first one's box but another class: its own track.
        let dets = [hi(b), d(0, 0.5, bx(200.0, 40.0, 60.0, 80.0)), d(1, 0.3, b)];
        for f in 0..10 {
            assert_eq!(ids(&mut t, f * 33, &dets), [1, 2, 3]);
        }
        assert_eq!(t.len(), 3);
        assert_eq!(ids(&mut t, 330, &dets[2..]), [3]);
    }

    #[test]
    fn steady_motion_keeps_id_and_prediction_follows_velocity() {
        let mut t = tracker();
        for f in 0..30u64 {
            let x = 5.0 * f as f32;
            assert_eq!(ids(&mut t, f * 33, &[hi(bx(x, 100.0, 40.0, 80.0))]), [1]);
        }
        // Nine empty frames, then a box 50 px on: no overlap with the last one seen (x = 145),
        // so only the velocity-driven prediction can match it.
        for f in 30..39u64 {
            assert!(t.update(f * 33, &[]).is_empty());
        }
        assert_eq!(
            ids(&mut t, 39 * 33, &[hi(bx(195.0, 100.0, 40.0, 80.0))]),
            [1]
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn low_score_continues_but_never_starts() {
        let mut t = tracker();
        let b = bx(5.0, 5.0, 40.0, 80.0);
        assert_eq!(ids(&mut t, 0, &[d(0, 0.07, b)]), [0]);
        assert!(t.is_empty());
        assert_eq!(ids(&mut t, 33, &[hi(b)]), [1]);
        assert_eq!(ids(&mut t, 66, &[d(0, 0.07, b)]), [1]);
        assert_eq!(ids(&mut t, 99, &[d(0, 0.01, b)]), [0]);
        // The high one takes the track first; the low one then has nothing left to continue.
        assert_eq!(ids(&mut t, 132, &[d(0, 0.06, b), d(0, 0.8, b)]), [0, 1]);
    }

    #[test]
    fn lost_timeout_boundaries() {
        let mut t = tracker();
        let det = [hi(bx(0.0, 0.0, 20.0, 20.0))];
        assert_eq!(ids(&mut t, 0, &det), [1]);
        t.update(500, &[]);
        assert_eq!(t.update(999, &det), vec![Some(1)], "lost for less: same id");
        t.update(1999, &[]);
        assert_eq!(t.len(), 1, "unmatched for exactly the timeout: still alive");
        t.update(2000, &[]);
        assert!(t.is_empty());
        assert_eq!(ids(&mut t, 2001, &det), [2]);
        // A single jump over the timeout drops the track too.
        assert_eq!(ids(&mut t, 3002, &det), [3]);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn reset_forgets_tracks_but_not_ids() {
        let mut t = tracker();
        let dets = [hi(bx(0.0, 0.0, 10.0, 10.0)), hi(bx(50.0, 0.0, 10.0, 10.0))];
        assert_eq!(ids(&mut t, 100, &dets), [1, 2]);
        t.reset();
        assert!(t.is_empty());
        assert_eq!(ids(&mut t, 0, &dets), [3, 4]);
    }

    #[test]
    fn zero_dt_updates_stay_finite() {
        let mut t = tracker();
        for i in 0..20 {
            let x = (i % 3) as f32;
            assert_eq!(ids(&mut t, 500, &[hi(bx(x, 0.0, 30.0, 60.0))]), [1]);
        }
        let k = &t.tracks[0].kf;
        assert!(all_finite(&k.mean, &k.cov));
        assert!(k.bbox().iter().all(|v| v.is_finite()));
    }

    #[test]
    fn bad_boxes_and_scores_never_panic_or_start_tracks() {
        let (nan, inf, big) = (f32::NAN, f32::INFINITY, f32::MAX);
        let good = bx(10.0, 10.0, 30.0, 30.0);
        let mut t = tracker();
        assert_eq!(ids(&mut t, 0, &[hi(good)]), [1]);
        let bad = [
            hi([nan, 10.0, 40.0, 40.0]),
            hi([10.0, 10.0, inf, 40.0]),
            hi([10.0, 10.0, 10.0, 40.0]),
            hi([10.0, 10.0, 40.0, 10.0]),
            hi([40.0, 40.0, 10.0, 10.0]),
            d(0, 0.07, [nan; 4]),
            d(0, nan, good),
            hi([big; 4]),
            hi([-big, -big, big, big]),
        ];
        assert_eq!(t.update(33, &bad)[..8], [None; 8]);
        assert!(t.len() <= 2);
        t.update(u64::MAX, &bad);
        t.update(5, &bad); // Time going backwards.
        let cfg = TrackerConfig {
            high: nan,
            low: nan,
            match_iou: nan,
            lost_timeout_ms: 0,
        };
        assert_eq!(Tracker::new(cfg).update(0, &[hi(good)]), vec![None]);
    }

    #[test]
    fn ids_are_never_reused() {
        let cfg = TrackerConfig {
            lost_timeout_ms: 50,
            ..TrackerConfig::default()
        };
        let mut t = Tracker::new(cfg);
        let mut last = 0;
        for f in 0..40u64 {
            // The object jumps around, so tracks keep dying and being born.
            let x = ((f * 37) % 11) as f32 * 100.0;
            let id = t.update(f * 40, &[hi(bx(x, 0.0, 20.0, 20.0))])[0].unwrap_or(0);
            assert!(id >= last && id >= 1);
            last = id;
        }
        assert!(last > 5);
    }

    #[test]
    fn greedy_ties_prefer_lower_indices_and_higher_iou() {
        let mut t = tracker();
        let b = bx(0.0, 0.0, 30.0, 30.0);
        assert_eq!(ids(&mut t, 0, &[hi(b)]), [1]);
        assert_eq!(ids(&mut t, 33, &[hi(b), hi(b)]), [1, 2]);
        let (near, far) = (bx(1.0, 0.0, 30.0, 30.0), bx(8.0, 0.0, 30.0, 30.0));
        assert_eq!(t.update(66, &[hi(far), hi(near)])[1], Some(1));
    }

    #[test]
    fn solver_and_kalman_update_are_sane() {
        let s = [
            [4.0, 1.0, 0.0, 2.0],
            [1.0, 3.0, 0.5, 0.0],
            [0.0, 0.5, 2.0, 0.1],
            [2.0, 0.0, 0.1, 5.0],
        ];
        let mut b = [[0.0; 8]; 4];
        for (i, row) in b.iter_mut().enumerate() {
            row[i] = 1.0;
            row[7] = i as f64;
        }
        let x = solve4(s, b).unwrap_or([[f64::NAN; 8]; 4]);
        for (i, j) in (0..4).flat_map(|i| (0..8).map(move |j| (i, j))) {
            let sx: f64 = (0..4).map(|k| s[i][k] * x[k][j]).sum();
            assert!((sx - b[i][j]).abs() < 1e-12, "S X != B at {i},{j}");
        }
        assert!(solve4([[1.0; 4]; 4], b).is_none());
        let mut k = Kalman::new([50.0, 50.0, 0.5, 80.0]);
        k.predict(1.0);
        let before = k.cov[0][0];
        assert!(k.update([60.0, 50.0, 0.5, 80.0]));
        assert!(k.mean[0] > 50.0 && k.mean[0] < 60.0 && k.mean[4] > 0.0);
        assert!(k.cov[0][0] < before);
        for (i, j) in (0..8).flat_map(|i| (0..8).map(move |j| (i, j))) {
            assert!(k.cov[i][j] == k.cov[j][i] && k.cov[i][i] > 0.0);
        }
    }
}
