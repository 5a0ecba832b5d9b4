use super::kalman::{all_finite, solve4};
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
        match_distance: nan,
        duplicate_iou: nan,
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
    let mut t = Tracker::new(TrackerConfig {
        duplicate_iou: 1.0,
        ..TrackerConfig::default()
    });
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

#[test]
fn duplicates_of_a_tracked_object_get_no_id() {
    let mut t = tracker();
    let b = bx(100.0, 100.0, 40.0, 40.0);
    // Same box, a neighbour (IoU 0.6), one inside it, one beside it (IoU 0.33), another class.
    let dets = [
        hi(b),
        d(0, 0.8, bx(108.0, 100.0, 40.0, 40.0)),
        d(0, 0.7, bx(110.0, 110.0, 20.0, 20.0)),
        d(0, 0.6, bx(120.0, 100.0, 40.0, 40.0)),
        d(1, 0.5, b),
    ];
    assert_eq!(ids(&mut t, 0, &dets), [1, 0, 0, 2, 3]);
    // Apart on both axes, the boxes' "intersection" is inverted on both sides: no overlap at all.
    let far = d(0, 0.9, bx(200.0, 200.0, 40.0, 40.0));
    assert_eq!(ids(&mut t, 0, &[hi(b), far]), [1, 4]);
    // The track takes the box that fits its prediction best, whatever the scores; the other box
    // over the object gets nothing.
    let mut t = tracker();
    assert_eq!(ids(&mut t, 0, &[hi(b)]), [1]);
    assert_eq!(
        ids(
            &mut t,
            100,
            &[d(0, 0.6, b), d(0, 0.95, bx(102.0, 100.0, 40.0, 40.0))]
        ),
        [1, 0]
    );
    // Off at 1.
    let mut t = Tracker::new(TrackerConfig {
        duplicate_iou: 1.0,
        ..TrackerConfig::default()
    });
    assert_eq!(ids(&mut t, 0, &dets[..3]), [1, 2, 3]);
}

#[test]
fn a_box_jumping_a_patch_keeps_its_id() {
    // The box's centre jumps 30 px (three quarters of its size; IoU 0.14 with the prediction)
    // and back, as OWLv2's best box does between neighbouring patches.
    let mut t = tracker();
    let xs = [100.0, 102.0, 104.0, 136.0, 108.0, 110.0, 80.0, 114.0];
    for (f, x) in xs.iter().enumerate() {
        assert_eq!(
            ids(&mut t, f as u64 * 100, &[hi(bx(*x, 50.0, 40.0, 40.0))]),
            [1],
            "frame {f}"
        );
    }
    // Without the distance gate each jump starts a new track (the track is found again by its
    // last observation once the box is back).
    let mut t = Tracker::new(TrackerConfig {
        match_distance: 0.0,
        ..TrackerConfig::default()
    });
    let got: Vec<u64> = xs
        .iter()
        .enumerate()
        .map(|(f, x)| ids(&mut t, f as u64 * 100, &[hi(bx(*x, 50.0, 40.0, 40.0))])[0])
        .collect();
    assert_eq!(got, [1, 1, 1, 2, 1, 1, 3, 1]);
    // Too far (more than one size) or too different in size: no match.
    let mut t = tracker();
    assert_eq!(ids(&mut t, 0, &[hi(bx(0.0, 0.0, 40.0, 40.0))]), [1]);
    assert_eq!(ids(&mut t, 0, &[hi(bx(45.0, 0.0, 40.0, 40.0))]), [2]);
    assert_eq!(ids(&mut t, 0, &[hi(bx(0.0, 0.0, 100.0, 100.0))]), [3]);
}

#[test]
fn a_track_found_again_moves_as_its_observations_did() {
    let mut t = tracker();
    // 4 px a frame (100 ms frames), then hidden for 5 frames, then seen 24 px on: matched by its
    // last observation's neighbourhood, and the filter then moves on at 4 px a frame.
    for f in 0..5u64 {
        let x = 4.0 * f as f32;
        assert_eq!(ids(&mut t, f * 100, &[hi(bx(x, 0.0, 40.0, 40.0))]), [1]);
    }
    for f in 5..10u64 {
        t.update(f * 100, &[]);
    }
    assert_eq!(ids(&mut t, 1000, &[hi(bx(40.0, 0.0, 40.0, 40.0))]), [1]);
    let v = t.tracks[0].kf.mean[4] * (100.0 / FRAME_MS);
    assert!((v - 4.0).abs() < 0.01, "velocity {v} px per frame");
    assert_eq!(ids(&mut t, 1100, &[hi(bx(44.0, 0.0, 40.0, 40.0))]), [1]);
}

#[test]
fn another_class_never_takes_a_track() {
    let mut t = tracker();
    assert_eq!(ids(&mut t, 0, &[hi(bx(0.0, 0.0, 40.0, 40.0))]), [1]);
    // Class 1 right where class 0's track is, class 0 a size away: each keeps to its own.
    assert_eq!(
        ids(
            &mut t,
            100,
            &[
                d(1, 0.9, bx(0.0, 0.0, 40.0, 40.0)),
                hi(bx(30.0, 0.0, 40.0, 40.0))
            ]
        ),
        [2, 1]
    );
}
