//! Class logits and post-processing for text queries, as transformers'
//! `post_process_object_detection`: `logit = (ce·q + shift) * scale`, `score = sigmoid(max_q logit)`,
//! label = first argmax, keep `score > threshold` (strict), boxes `(cx ± w/2, cy ± h/2) × max(H, W)`
//! in original-image pixels (no clipping). Optional class-aware greedy NMS (off by default).
//! Detections are sorted by score, highest first (ties keep patch order). Pure functions.

use serde::Serialize;

pub use crate::backend::ImageHeads;

/// One detection.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    pub label: String,
    pub query_index: usize,
    pub score: f32,
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
}

/// Post-processing settings of one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PostParams {
    /// Keep scores strictly above this.
    pub threshold: f32,
    /// Greedy NMS IoU threshold per label; `None` = no NMS (transformers' behaviour).
    pub nms_iou: Option<f32>,
}

impl PostParams {
    /// Validated settings: the threshold and the NMS IoU must be finite numbers in `[0, 1]`.
    pub fn new(threshold: f32, nms_iou: Option<f32>) -> Result<Self, String> {
        if !threshold.is_finite() || !(0.0..=1.0).contains(&threshold) {
            return Err(format!(
                "threshold must be a number in [0, 1], got {threshold}"
            ));
        }
        if let Some(n) = nms_iou {
            if !n.is_finite() || !(0.0..=1.0).contains(&n) {
                return Err(format!("nms IoU must be a number in [0, 1], got {n}"));
            }
        }
        Ok(PostParams { threshold, nms_iou })
    }
}

/// `logits[p * Q + q] = (dot(ce[p], query[q]) + shift[p]) * scale[p]`.
pub fn class_logits(heads: &ImageHeads<'_>, queries: &[&[f32]]) -> Vec<f32> {
    let p = heads.logit_shift.len();
    let q = queries.len();
    let c = heads.class_embeds.len().checked_div(p).unwrap_or(0);
    let mut out = vec![0f32; p * q];
    for i in 0..p {
        let ce = &heads.class_embeds[i * c..(i + 1) * c];
        for (j, qe) in queries.iter().enumerate() {
            let dot: f32 = ce.iter().zip(qe.iter()).map(|(a, b)| a * b).sum();
            out[i * q + j] = (dot + heads.logit_shift[i]) * heads.logit_scale[i];
        }
    }
    out
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// A negative exemplar (query by example): its embedding and the query it vetoes (`None`: every
/// query of the request).
#[derive(Debug, Clone, Copy)]
pub struct Negative<'a> {
    pub embedding: &'a [f32],
    pub target: Option<usize>,
}

/// Per-patch best query, score and box in original-image pixels (patch order, no threshold).
pub fn patch_predictions(
    heads: &ImageHeads<'_>,
    queries: &[&[f32]],
    width: u32,
    height: u32,
) -> Vec<(usize, f32, [f32; 4])> {
    vetoed_predictions(heads, queries, &[], width, height)
        .into_iter()
        .flatten()
        .collect()
}

/// `patch_predictions` with negative exemplars. The rule: at each patch, a query is vetoed when a
/// negative that applies to it has a class logit at least as high as the query's own (the patch
/// looks at least as much like the counter-example as like the example; logits of one patch share
/// its shift and positive scale, so this compares the cosine similarities). The patch's label is
/// the first argmax among the queries not vetoed and its score stays the sigmoid of that query's
/// logit, so a kept box scores exactly as without negatives; `None` where every query is vetoed.
pub fn vetoed_predictions(
    heads: &ImageHeads<'_>,
    queries: &[&[f32]],
    negatives: &[Negative<'_>],
    width: u32,
    height: u32,
) -> Vec<Option<(usize, f32, [f32; 4])>> {
    let q = queries.len();
    if q == 0 {
        return Vec::new();
    }
    let logits = class_logits(heads, queries);
    let neg: Vec<&[f32]> = negatives.iter().map(|n| n.embedding).collect();
    let neg_logits = class_logits(heads, &neg);
    let side = width.max(height) as f32;
    logits
        .chunks_exact(q)
        .enumerate()
        .map(|(p, row)| {
            let negs = neg_logits
                .get(p * neg.len()..(p + 1) * neg.len())
                .unwrap_or(&[]);
            let vetoed = |j: usize| {
                negatives
                    .iter()
                    .zip(negs)
                    .any(|(n, &l)| n.target.is_none_or(|t| t == j) && l >= row[j])
            };
            let mut best: Option<usize> = None;
            for (j, v) in row.iter().enumerate() {
                if best.is_none_or(|b| *v > row[b]) && !vetoed(j) {
                    best = Some(j);
                }
            }
            let best = best?;
            let b = &heads.pred_boxes[p * 4..p * 4 + 4];
            let (cx, cy, w, h) = (b[0], b[1], b[2], b[3]);
            let bbox = [
                (cx - 0.5 * w) * side,
                (cy - 0.5 * h) * side,
                (cx + 0.5 * w) * side,
                (cy + 0.5 * h) * side,
            ];
            Some((best, sigmoid(row[best]), bbox))
        })
        .collect()
}

/// The queries of one detection as embeddings: one per reported label, and the negatives.
#[derive(Debug, Clone, Copy)]
pub struct Queries<'a> {
    pub embeddings: &'a [&'a [f32]],
    pub labels: &'a [String],
    pub negatives: &'a [Negative<'a>],
}

/// Turns the heads of one image into detections for `queries`.
pub fn detect(
    heads: &ImageHeads<'_>,
    queries: &Queries<'_>,
    width: u32,
    height: u32,
    params: &PostParams,
) -> Vec<Detection> {
    let mut dets: Vec<Detection> =
        vetoed_predictions(heads, queries.embeddings, queries.negatives, width, height)
            .into_iter()
            .flatten()
            .filter(|(_, score, _)| *score > params.threshold)
            .map(|(query_index, score, bbox)| Detection {
                label: queries.labels.get(query_index).cloned().unwrap_or_default(),
                query_index,
                score,
                bbox,
            })
            .collect();
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    if let Some(iou) = params.nms_iou {
        dets = nms(dets, iou);
    }
    dets
}

/// Several exemplar embeddings of one label as one query: the mean of the (normalised) embeddings,
/// normalised again as the class head normalises a query (`e / (‖e‖ + 1e-6)`). One embedding is
/// returned as it is.
pub fn average_embedding(embeddings: &[&[f32]]) -> Vec<f32> {
    let [first, rest @ ..] = embeddings else {
        return Vec::new();
    };
    if rest.is_empty() {
        return first.to_vec();
    }
    let mut mean = vec![0f32; first.len()];
    for e in embeddings {
        for (m, v) in mean.iter_mut().zip(e.iter()) {
            *m += v / embeddings.len() as f32;
        }
    }
    let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
    mean.iter().map(|v| v / (norm + 1e-6)).collect()
}

/// The patch of an exemplar image that becomes the query (transformers' `embed_image_query`):
/// with no box, the highest objectness (first on ties, as `argmax`); with `box_norm`
/// (`[x0, y0, x1, y1]` divided by the exemplar's `max(H, W)`), the patch whose predicted box has
/// the highest IoU with it, ties going to the higher objectness. `None` for an empty head.
pub fn exemplar_patch(heads: &ImageHeads<'_>, box_norm: Option<[f32; 4]>) -> Option<usize> {
    let obj = heads.objectness_logits;
    let p = obj.len();
    if p == 0 || heads.pred_boxes.len() < p * 4 {
        return None;
    }
    let Some(q) = box_norm else {
        let mut best = 0;
        for i in 1..p {
            if obj[i] > obj[best] {
                best = i;
            }
        }
        return Some(best);
    };
    let mut best = 0;
    let mut best_iou = f32::NEG_INFINITY;
    for i in 0..p {
        let b = &heads.pred_boxes[i * 4..i * 4 + 4];
        let c = [
            b[0] - 0.5 * b[2],
            b[1] - 0.5 * b[3],
            b[0] + 0.5 * b[2],
            b[1] + 0.5 * b[3],
        ];
        let v = iou(&q, &c);
        if v > best_iou || (v == best_iou && obj[i] > obj[best]) {
            best = i;
            best_iou = v;
        }
    }
    Some(best)
}

/// An exemplar's query embedding from its patch's class embedding, normalised as transformers'
/// class head normalises a query (`e / (‖e‖ + 1e-6)`).
pub fn exemplar_embedding(heads: &ImageHeads<'_>, patch: usize) -> Option<Vec<f32>> {
    let p = heads.logit_shift.len();
    let c = heads.class_embeds.len().checked_div(p)?;
    let e = heads.class_embeds.get(patch * c..(patch + 1) * c)?;
    let norm = e.iter().map(|v| v * v).sum::<f32>().sqrt();
    Some(e.iter().map(|v| v / (norm + 1e-6)).collect())
}

/// The area of an `[x0, y0, x1, y1]` box; 0 when it is empty or inverted along either side.
pub fn box_area(r: &[f32; 4]) -> f32 {
    (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0)
}

/// The area two `[x0, y0, x1, y1]` boxes share (0 when they do not overlap).
pub fn intersection(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    box_area(&[
        a[0].max(b[0]),
        a[1].max(b[1]),
        a[2].min(b[2]),
        a[3].min(b[3]),
    ])
}

/// Intersection over union of two `[x0, y0, x1, y1]` boxes (0 for empty boxes).
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let inter = intersection(a, b);
    let union = box_area(a) + box_area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Greedy NMS per `query_index` on score-sorted detections: drops a box whose IoU with a kept box
/// of the same query is above `threshold`.
pub fn nms(sorted: Vec<Detection>, threshold: f32) -> Vec<Detection> {
    let mut kept: Vec<Detection> = Vec::with_capacity(sorted.len());
    for d in sorted {
        if kept
            .iter()
            .all(|k| k.query_index != d.query_index || iou(&k.bbox, &d.bbox) <= threshold)
        {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heads<'a>(
        ce: &'a [f32],
        shift: &'a [f32],
        scale: &'a [f32],
        boxes: &'a [f32],
    ) -> ImageHeads<'a> {
        ImageHeads {
            class_embeds: ce,
            logit_shift: shift,
            logit_scale: scale,
            pred_boxes: boxes,
            objectness_logits: &[],
        }
    }

    #[test]
    fn logits_add_shift_then_scale() {
        let ce = [1.0, 0.0, 0.0, 1.0];
        let h = heads(&ce, &[0.5, -1.0], &[2.0, 3.0], &[0.0; 8]);
        let q0 = [1.0f32, 0.0];
        let q1 = [0.0f32, 1.0];
        let l = class_logits(&h, &[&q0, &q1]);
        assert_eq!(l, vec![(1.0 + 0.5) * 2.0, 0.5 * 2.0, -3.0, 0.0]);
    }

    #[test]
    fn threshold_is_strict_and_boxes_scale_by_longest_side() {
        // logit 0 -> score exactly 0.5
        let ce = [1.0, 0.0];
        let boxes = [0.5, 0.25, 0.5, 0.5];
        let h = heads(&ce, &[0.0], &[1.0], &boxes);
        let q = [0.0f32, 1.0];
        let labels = vec!["a".to_string()];
        let keep = PostParams {
            threshold: 0.4999,
            nms_iou: None,
        };
        let drop = PostParams {
            threshold: 0.5,
            nms_iou: None,
        };
        let qs = Queries {
            embeddings: &[&q],
            labels: &labels,
            negatives: &[],
        };
        let d = detect(&h, &qs, 200, 100, &keep);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].score, 0.5);
        // S = max(200, 100) = 200 on both axes.
        assert_eq!(d[0].bbox, [50.0, 0.0, 150.0, 100.0]);
        assert!(detect(&h, &qs, 200, 100, &drop).is_empty());
    }

    #[test]
    fn label_is_first_argmax_and_sorted_by_score() {
        let ce = [1.0, 0.0, 0.0, 1.0];
        let h = heads(&ce, &[0.0, 0.0], &[1.0, 5.0], &[0.5; 8]);
        let q0 = [1.0f32, 1.0];
        let q1 = [1.0f32, 1.0];
        let labels = vec!["x".to_string(), "y".to_string()];
        let d = detect(
            &h,
            &Queries {
                embeddings: &[&q0, &q1],
                labels: &labels,
                negatives: &[],
            },
            10,
            10,
            &PostParams {
                threshold: 0.0,
                nms_iou: None,
            },
        );
        assert_eq!(d.len(), 2);
        assert!(d.iter().all(|x| x.query_index == 0 && x.label == "x"));
        assert!(d[0].score > d[1].score);
    }

    #[test]
    fn a_negative_vetoes_the_queries_it_applies_to_where_it_matches_at_least_as_well() {
        // Two patches: one along x, one along y; every logit is the dot product (shift 0, scale 1).
        let ce = [1.0, 0.0, 0.0, 1.0];
        let boxes = [0.5; 8];
        let h = heads(&ce, &[0.0, 0.0], &[1.0, 1.0], &boxes);
        let (qx, qy) = ([1.0f32, 0.2], [0.2f32, 1.0]);
        let all = |e: &'static [f32]| Negative {
            embedding: e,
            target: None,
        };
        let best = |negs: &[Negative<'_>]| -> Vec<Option<usize>> {
            vetoed_predictions(&h, &[&qx, &qy], negs, 10, 10)
                .into_iter()
                .map(|p| p.map(|(q, _, _)| q))
                .collect()
        };
        assert_eq!(best(&[]), vec![Some(0), Some(1)]);
        // Negative along x: patch 0 (x) is vetoed for both queries; patch 1 keeps qy (1.0 > 0).
        assert_eq!(best(&[all(&[1.0, 0.0])]), vec![None, Some(1)]);
        // Negative for query 0 only, matching patch 0 better than qx (1.5 >= 1.0): patch 0 falls
        // back to qy; its score is qy's own, unchanged.
        let n = [Negative {
            embedding: &[1.5, 0.0],
            target: Some(0),
        }];
        let p = vetoed_predictions(&h, &[&qx, &qy], &n, 10, 10);
        let (q, s, _) = p[0].expect("qy kept");
        assert_eq!(q, 1);
        assert_eq!(s, sigmoid(0.2));
        // A weaker negative (0.5 < 1.0) changes nothing.
        assert_eq!(best(&[all(&[0.5, 0.0])]), vec![Some(0), Some(1)]);
    }

    #[test]
    fn averaged_exemplars_are_the_normalised_mean() {
        let a = [1.0f32, 0.0];
        let b = [0.0f32, 1.0];
        let m = average_embedding(&[&a, &b]);
        // The mean [0.5, 0.5] divided by (its norm + 1e-6), as the class head does.
        let r = 0.5 / (0.5f32.sqrt() + 1e-6);
        assert!((m[0] - r).abs() < 1e-7 && (m[1] - r).abs() < 1e-7, "{m:?}");
        assert_eq!(average_embedding(&[&a]), a.to_vec());
        assert!(average_embedding(&[]).is_empty());
    }

    #[test]
    fn params_are_validated() {
        assert!(PostParams::new(0.0, Some(1.0)).is_ok());
        for (t, n) in [
            (1.5, None),
            (-0.1, None),
            (f32::NAN, None),
            (0.1, Some(2.0)),
            (0.1, Some(f32::NAN)),
        ] {
            assert!(PostParams::new(t, n).is_err(), "{t} {n:?}");
        }
    }

    #[test]
    fn iou_and_nms() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [5.0, 0.0, 15.0, 10.0];
        assert!((iou(&a, &b) - 50.0 / 150.0).abs() < 1e-6);
        assert_eq!(iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        assert_eq!(iou(&[0.0; 4], &[0.0; 4]), 0.0);
        let det = |q: usize, s: f32, bx: [f32; 4]| Detection {
            label: q.to_string(),
            query_index: q,
            score: s,
            bbox: bx,
        };
        let input = vec![
            det(0, 0.9, a),
            det(0, 0.8, b),
            det(1, 0.7, b),
            det(0, 0.6, [20.0, 20.0, 30.0, 30.0]),
        ];
        let kept = nms(input.clone(), 0.3);
        assert_eq!(
            kept.iter().map(|d| d.score).collect::<Vec<_>>(),
            vec![0.9, 0.7, 0.6]
        );
        let kept = nms(input, 0.5);
        assert_eq!(kept.len(), 4);
    }
}
