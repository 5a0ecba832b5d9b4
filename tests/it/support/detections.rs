//! The one detection comparator. Its default bounds are the README's ("Invariants": scores within
//! 5e-4, box coordinates within 1e-3·max(H,W), the parity bounds against transformers); a test
//! comparing two runs of our own engine may ask for a tighter bound, never a looser one.

use intelligent_video::postprocess::Detection;

/// One detection, whatever it was read from (library, CLI/daemon JSON, golden JSON, patch
/// predictions).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Det {
    /// The query text; `None` where only the index is known (goldens, patch predictions).
    pub(crate) label: Option<String>,
    pub(crate) query_index: usize,
    pub(crate) score: f64,
    pub(crate) bbox: [f64; 4],
}

impl Det {
    /// A library detection.
    pub(crate) fn from_lib(d: &Detection) -> Det {
        Det {
            label: Some(d.label.clone()),
            query_index: d.query_index,
            score: f64::from(d.score),
            bbox: d.bbox.map(f64::from),
        }
    }

    /// One `postprocess::patch_predictions` entry: (query index, score, box).
    pub(crate) fn from_patch(&(query_index, score, bbox): &(usize, f32, [f32; 4])) -> Det {
        Det {
            label: None,
            query_index,
            score: f64::from(score),
            bbox: bbox.map(f64::from),
        }
    }

    /// A JSON detection: the API's `{"label": text, "query_index", "score", "box"}` or a golden's
    /// `{"label": query index, "score", "box"}`. Every field must be there.
    pub(crate) fn from_json(v: &serde_json::Value) -> Result<Det, String> {
        let f = |v: &serde_json::Value, what: &str| {
            v.as_f64()
                .ok_or_else(|| format!("{what} is not a number in {v}"))
        };
        let (label, query_index) = match (&v["label"], &v["query_index"]) {
            (serde_json::Value::String(s), qi) => (
                Some(s.clone()),
                qi.as_u64()
                    .ok_or_else(|| format!("no query_index in {v}"))? as usize,
            ),
            (l, serde_json::Value::Null) => (
                None,
                l.as_u64().ok_or_else(|| format!("no label in {v}"))? as usize,
            ),
            _ => return Err(format!("unexpected label/query_index in {v}")),
        };
        let b = v["box"]
            .as_array()
            .filter(|b| b.len() == 4)
            .ok_or_else(|| format!("no 4-number box in {v}"))?;
        Ok(Det {
            label,
            query_index,
            score: f(&v["score"], "score")?,
            bbox: [
                f(&b[0], "box[0]")?,
                f(&b[1], "box[1]")?,
                f(&b[2], "box[2]")?,
                f(&b[3], "box[3]")?,
            ],
        })
    }

    /// [`Det::from_json`] over a JSON array of detections.
    pub(crate) fn list_from_json(v: &serde_json::Value) -> Result<Vec<Det>, String> {
        v.as_array()
            .ok_or_else(|| format!("detections are not an array: {v}"))?
            .iter()
            .map(Det::from_json)
            .collect()
    }
}

/// How far two detection lists may be apart.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tolerance {
    /// Largest |Δscore|.
    pub(crate) score: f64,
    /// Largest |Δ| of a box coordinate: `box_px + box_side · max(H,W)` pixels.
    pub(crate) box_px: f64,
    pub(crate) box_side: f64,
    /// `true`: a difference equal to the bound passes (≤); `false`: it fails (<).
    pub(crate) inclusive: bool,
}

impl Tolerance {
    /// README "Invariants" / the parity bounds: |Δscore| ≤ 5e-4, |Δbox| ≤ 1e-3·max(H,W).
    pub(crate) const README: Tolerance = Tolerance {
        score: 5e-4,
        box_px: 0.0,
        box_side: 1e-3,
        inclusive: true,
    };

    /// A tighter bound in absolute units: |Δscore| < `score`, |Δbox| < `box_px` pixels.
    pub(crate) const fn strict(score: f64, box_px: f64) -> Tolerance {
        Tolerance {
            score,
            box_px,
            box_side: 0.0,
            inclusive: false,
        }
    }

    fn within(&self, d: f64, bound: f64) -> bool {
        if self.inclusive {
            d <= bound
        } else {
            d < bound
        }
    }
}

/// The largest differences seen, for logging: score, and box relative to max(H,W).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Drift {
    pub(crate) score: f64,
    pub(crate) box_rel: f64,
}

/// Compares `got` with `want` pairwise, in order: same length, same query index and label, score
/// and box within `tol` for an image whose larger side is `side` pixels.
pub(crate) fn compare(
    got: &[Det],
    want: &[Det],
    side: f64,
    tol: Tolerance,
) -> Result<Drift, String> {
    compare_allowing(got, want, side, tol, |_, _, _| false)
}

/// [`compare`], where `query_tie(i, got, want)` may accept detection `i` naming another query
/// than the reference (where the reference's own logits for the two queries tie).
pub(crate) fn compare_allowing(
    got: &[Det],
    want: &[Det],
    side: f64,
    tol: Tolerance,
    query_tie: impl Fn(usize, usize, usize) -> bool,
) -> Result<Drift, String> {
    if got.len() != want.len() {
        return Err(format!("{} detections, want {}", got.len(), want.len()));
    }
    let box_bound = tol.box_px + tol.box_side * side;
    let mut drift = Drift::default();
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g.query_index != w.query_index {
            if !query_tie(i, g.query_index, w.query_index) {
                return Err(format!(
                    "detection {i}: query {} vs {} ({g:?} vs {w:?})",
                    g.query_index, w.query_index
                ));
            }
        } else if g.label != w.label {
            return Err(format!(
                "detection {i}: label {:?} vs {:?}",
                g.label, w.label
            ));
        }
        let ds = (g.score - w.score).abs();
        drift.score = drift.score.max(ds);
        if !tol.within(ds, tol.score) {
            return Err(format!(
                "detection {i}: score {} vs {} (|Δ| {ds:.3e}, bound {:.1e})",
                g.score, w.score, tol.score
            ));
        }
        for k in 0..4 {
            let db = (g.bbox[k] - w.bbox[k]).abs();
            drift.box_rel = drift.box_rel.max(db / side);
            if !tol.within(db, box_bound) {
                return Err(format!(
                    "detection {i}: box {:?} vs {:?} (|Δ| of [{k}] {db:.3e}, bound {box_bound:.3e})",
                    g.bbox, w.bbox
                ));
            }
        }
    }
    Ok(drift)
}

#[test]
fn comparator_bounds_labels_and_ties() {
    let det = |query_index, score, x| Det {
        label: Some(format!("q{query_index}")),
        query_index,
        score,
        bbox: [x, 0.0, 10.0, 10.0],
    };
    let want = [det(0, 0.5, 1.0), det(1, 0.25, 2.0)];
    // README bounds at max(H,W) = 200: score ≤ 5e-4, box ≤ 0.2 px (inclusive).
    let near = [det(0, 0.5 + 4e-4, 1.0 + 0.19), det(1, 0.25, 2.0)];
    let drift = compare(&near, &want, 200.0, Tolerance::README).expect("within the README bounds");
    assert!((drift.score - 4e-4).abs() < 1e-9 && (drift.box_rel - 0.19 / 200.0).abs() < 1e-9);
    let far_score = [det(0, 0.5 + 6e-4, 1.0), det(1, 0.25, 2.0)];
    assert!(compare(&far_score, &want, 200.0, Tolerance::README).is_err());
    let far_box = [det(0, 0.5, 1.0 + 0.21), det(1, 0.25, 2.0)];
    assert!(compare(&far_box, &want, 200.0, Tolerance::README).is_err());
    assert!(compare(&far_box, &want, 400.0, Tolerance::README).is_ok());
    // A strict bound fails at equality; the README's passes there.
    let tight = Tolerance::strict(0.25, 1.0);
    let at_bound = [det(0, 0.75, 1.0), det(1, 0.25, 2.0)];
    assert!(compare(&at_bound, &want, 200.0, tight).is_err());
    assert!(compare(
        &at_bound,
        &want,
        200.0,
        Tolerance {
            inclusive: true,
            ..tight
        }
    )
    .is_ok());
    // Length, query index and label must agree; a tie callback may accept another query.
    assert!(compare(&want[..1], &want, 200.0, Tolerance::README).is_err());
    let swapped = [det(1, 0.5, 1.0), det(1, 0.25, 2.0)];
    assert!(compare(&swapped, &want, 200.0, Tolerance::README).is_err());
    assert!(
        compare_allowing(&swapped, &want, 200.0, Tolerance::README, |i, g, w| {
            (i, g, w) == (0, 1, 0)
        })
        .is_ok()
    );
    let mut relabelled = want.clone();
    relabelled[1].label = Some("other".into());
    assert!(compare(&relabelled, &want, 200.0, Tolerance::README).is_err());
    // Golden JSON (label = query index) and API JSON (label text + query_index) both read.
    let golden =
        Det::from_json(&serde_json::json!({"label": 1, "score": 0.5, "box": [1, 2, 3, 4]}))
            .expect("golden");
    assert_eq!((golden.label, golden.query_index), (None, 1));
    let api = serde_json::json!({"label": "q0", "query_index": 0, "score": 0.5, "box": [1.0, 0.0, 10.0, 10.0]});
    assert_eq!(Det::from_json(&api).expect("api"), det(0, 0.5, 1.0));
    assert!(Det::from_json(
        &serde_json::json!({"label": "q0", "query_index": 0, "box": [1, 2, 3, 4]})
    )
    .is_err());
}
