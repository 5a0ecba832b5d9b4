//! Parity with transformers on the committed tiny checkpoints (goldens from
//! `models/fixtures/generate.py`): preprocessing, query embeddings, image heads, detections.

use crate::support::detections::{compare_allowing, Det, Tolerance};
use crate::support::fixtures::{
    self, golden_json, golden_pixels, golden_queries as queries, goldens, max_abs_diff, model_dir,
};
use intelligent_video::engine::{load_detector, DetectorOptions};
use intelligent_video::model::graphs::Attention;
use intelligent_video::model::tokenizer::QueryRules;
use intelligent_video::pipeline::Detector;
use intelligent_video::postprocess::{self, PostParams};
use intelligent_video::preprocess::{self, ImageLimits};

const MODELS: [&str; 2] = ["tiny-a", "tiny-b"];

fn load(model: &str) -> Detector {
    load_detector(&model_dir(model), &DetectorOptions::default()).expect("model loads")
}

fn lossless_images(j: &serde_json::Value) -> Vec<serde_json::Value> {
    j["images"]
        .as_array()
        .expect("images")
        .iter()
        .filter(|i| i["file"].as_str().is_some_and(|f| f.ends_with(".png")))
        .cloned()
        .collect()
}

#[test]
fn preprocessing_matches_transformers_pixel_values() {
    for model in MODELS {
        let j = golden_json(model);
        let g = goldens(model);
        let det = load(model);
        let images = lossless_images(&j);
        assert!(images.len() >= 4, "{model}: too few lossless test images");
        for img in images {
            let name = img["name"].as_str().expect("name");
            let file = fixtures::fixtures().join(img["file"].as_str().expect("file"));
            let bytes = std::fs::read(&file).expect("image");
            let rgb = preprocess::decode(&bytes, &ImageLimits::default()).expect("decodes");
            assert_eq!(rgb.width as u64, img["width"].as_u64().expect("w"));
            assert_eq!(rgb.height as u64, img["height"].as_u64().expect("h"));
            let mut px = Vec::new();
            det.preprocess_into(&rgb, &mut px);
            let want = &g[&format!("pixel_values/{name}")];
            let d = max_abs_diff(&px, &want.data);
            eprintln!("{model}/{name}: pixel_values max |Δ| = {d:.2e}");
            assert!(d <= 1e-4, "{model}/{name}: pixel_values max |Δ| = {d}");
        }
    }
}

#[test]
fn query_embeddings_match_transformers() {
    for model in MODELS {
        let j = golden_json(model);
        let g = goldens(model);
        let mut det = load(model);
        let qs = queries(&j);
        // Token ids first.
        let ids = &g["input_ids"];
        for (i, q) in qs.iter().enumerate() {
            let got = det.tokenize(i, q).expect("tokenizes");
            let want: Vec<i64> = ids.data[i * 16..(i + 1) * 16]
                .iter()
                .map(|v| *v as i64)
                .collect();
            assert_eq!(got, want, "{model}: ids of {q:?}");
        }
        let emb = det.query_embeddings(&qs).expect("embeddings");
        let flat: Vec<f32> = emb.iter().flat_map(|e| e.iter().copied()).collect();
        let d = max_abs_diff(&flat, &g["query_embeds"].data);
        eprintln!("{model}: query_embeds max |Δ| = {d:.2e}");
        assert!(d <= 1e-5, "{model}: query_embeds max |Δ| = {d}");
        // Second call is served from the cache and returns identical values.
        let before = det.cache_stats();
        let again = det.query_embeddings(&qs).expect("cached");
        assert_eq!(det.cache_stats().hits, before.hits + qs.len() as u64);
        assert_eq!(det.cache_stats().misses, before.misses);
        assert!(again.iter().zip(&emb).all(|(a, b)| a[..] == b[..]));
    }
}

#[test]
fn image_heads_match_transformers_on_reference_pixels() {
    check_image_heads(Attention::Fused);
}

/// The plain-ONNX attention form (what TensorRT is given) is exact too.
#[test]
fn unfused_attention_image_heads_match_transformers() {
    check_image_heads(Attention::Unfused);
}

fn check_image_heads(attention: Attention) {
    for model in MODELS {
        let mut det = load_detector(
            &model_dir(model),
            &DetectorOptions {
                attention,
                ..DetectorOptions::default()
            },
        )
        .expect("model loads");
        assert_heads_match_transformers(model, &mut det);
    }
}

/// `det`'s image heads and logits on the reference pixels of `model`'s goldens are transformers'
/// within the exact engine's bounds (any backend that claims fp32 exactness).
pub(crate) fn assert_heads_match_transformers(model: &str, det: &mut Detector) {
    let j = golden_json(model);
    let g = goldens(model);
    let qs = queries(&j);
    let emb = det.query_embeddings(&qs).expect("embeddings");
    let q: Vec<&[f32]> = emb.iter().map(|e| &e[..]).collect();
    for img in j["images"].as_array().expect("images") {
        let name = img["name"].as_str().expect("name");
        let px = golden_pixels(&g, name);
        let out = det.run_images(&px, 1).expect("image graph runs");
        let heads = out.heads(0);
        let d = max_abs_diff(heads.class_embeds, &g[&format!("class_embeds/{name}")].data);
        assert!(d <= 1e-5, "{model}/{name}: class_embeds max |Δ| = {d}");
        let d = max_abs_diff(heads.pred_boxes, &g[&format!("pred_boxes/{name}")].data);
        assert!(d <= 1e-5, "{model}/{name}: pred_boxes max |Δ| = {d}");
        let logits = postprocess::class_logits(&heads, &q);
        let want = &g[&format!("logits/{name}")];
        let scale = want.data.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let d = max_abs_diff(&logits, &want.data);
        eprintln!(
            "{model}/{name} on {}: logits max |Δ| = {d:.2e} (scale {scale:.1})",
            det.backend_name()
        );
        assert!(
            d <= 1e-5 * scale,
            "{model}/{name}: logits max |Δ| = {d} (scale {scale})"
        );
        if let Some(obj) = g.get(&format!("objectness_logits/{name}")) {
            let d = max_abs_diff(&out.objectness_logits, &obj.data);
            assert!(d <= 1e-4, "{model}/{name}: objectness max |Δ| = {d}");
        }
    }
}

#[test]
fn detections_match_transformers_end_to_end() {
    for model in MODELS {
        let j = golden_json(model);
        let g = goldens(model);
        let mut det = load(model);
        let qs = queries(&j);
        let emb = det.query_embeddings(&qs).expect("embeddings");
        let q: Vec<&[f32]> = emb.iter().map(|e| &e[..]).collect();
        for img in lossless_images(&j) {
            let name = img["name"].as_str().expect("name");
            let file = fixtures::fixtures().join(img["file"].as_str().expect("file"));
            let rgb = preprocess::decode(
                &std::fs::read(&file).expect("read"),
                &ImageLimits::default(),
            )
            .expect("decode");
            let mut px = Vec::new();
            det.preprocess_into(&rgb, &mut px);
            let out = det.run_images(&px, 1).expect("runs");
            let ours = postprocess::patch_predictions(&out.heads(0), &q, rgb.width, rgb.height);
            let want = Det::list_from_json(&img["detections"]).expect("golden detections");
            assert_eq!(
                ours.len(),
                want.len(),
                "{model}/{name}: one detection per patch at threshold 0"
            );
            let spread = want.iter().fold((f64::MAX, f64::MIN), |s, w| {
                (s.0.min(w.score), s.1.max(w.score))
            });
            let ours_d: Vec<Det> = ours.iter().map(Det::from_patch).collect();
            // README tolerances; a label may differ only where transformers' own logits for the
            // two queries tie.
            let worst = compare_allowing(
                &ours_d,
                &want,
                rgb.width.max(rgb.height) as f64,
                Tolerance::README,
                |p, label, wl| {
                    let row = &g[&format!("logits/{name}")].data[p * qs.len()..(p + 1) * qs.len()];
                    let tie = (row[label] - row[wl]).abs() <= 1e-4;
                    if !tie {
                        eprintln!(
                            "{model}/{name} patch {p}: label {label} vs {wl}, logits {row:?}"
                        );
                    }
                    tie
                },
            )
            .unwrap_or_else(|e| panic!("{model}/{name}: {e}"));
            eprintln!(
                "{model}/{name}: max score |Δ| = {:.2e}, max box |Δ|/S = {:.2e}",
                worst.score, worst.box_rel
            );
            assert!(
                spread.1 - spread.0 > 0.2,
                "{model}/{name}: golden scores do not spread: {spread:?}"
            );
            // The public pipeline gives the same set, sorted, with the strict default threshold.
            let dets = det
                .detect(
                    &[&rgb],
                    &qs,
                    &QueryRules::default(),
                    &PostParams {
                        threshold: 0.1,
                        nms_iou: None,
                    },
                )
                .expect("detect")
                .remove(0);
            let expect_n = ours.iter().filter(|o| o.1 > 0.1).count();
            assert_eq!(dets.len(), expect_n);
            assert!(dets.windows(2).all(|w| w[0].score >= w[1].score));
            assert!(dets.iter().all(|d| d.label == qs[d.query_index]));
        }
    }
}
