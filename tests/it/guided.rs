//! Query by example against transformers' `image_guided_detection` (goldens from
//! `models/fixtures/generate_guided.py`): the exemplar's query patch (highest objectness, or the
//! best IoU with a given box), the target's class logits for it and its boxes; the embedding
//! cache; clear errors for boxes outside the exemplar or empty.

use std::sync::Arc;

use crate::support::fixtures::{self, model_dir};
use intelligent_video::engine::{load_detector, DetectorOptions};
use intelligent_video::pipeline::{Exemplar, ExemplarSpec, PipelineError, QueryPlan};
use intelligent_video::postprocess::{self, PostParams};
use intelligent_video::preprocess::{self, ImageLimits, Rgb};

fn golden(model: &str) -> serde_json::Value {
    let path = fixtures::fixtures().join(format!("golden/{model}-guided.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("golden")).expect("json")
}

fn decode(name: &str) -> Rgb {
    preprocess::decode(&fixtures::image(name), &ImageLimits::default()).expect("decodes")
}

fn bbox(v: &serde_json::Value) -> Option<[f32; 4]> {
    let a = v.as_array()?;
    Some([0, 1, 2, 3].map(|i| a[i].as_f64().unwrap_or(f64::NAN) as f32))
}

fn stem(file: &str) -> &str {
    file.strip_suffix(".png").unwrap_or(file)
}

/// Exactness of the selection and the embedding: both images fed with transformers' own
/// `pixel_values` (preprocessing parity is `parity.rs`'s), so only the graph and the query path
/// are compared.
#[test]
fn exemplar_queries_match_transformers_image_guided_detection() {
    for model in ["tiny-a", "tiny-b"] {
        let g = golden(model);
        let pixels = fixtures::goldens(model);
        let mut det = load_detector(&model_dir(model), &DetectorOptions::default()).expect("loads");
        for case in g["cases"].as_array().expect("cases") {
            let ex_name = case["exemplar"].as_str().expect("exemplar");
            let tg_name = case["target"].as_str().expect("target");
            let ex = decode(ex_name);
            let b = bbox(&case["box"]);
            let what = format!("{model}: {ex_name} {b:?} -> {tg_name}");

            let ex_out = det
                .run_images(&fixtures::golden_pixels(&pixels, stem(ex_name)), 1)
                .expect("exemplar runs");
            let side = ex.width.max(ex.height) as f32;
            let norm = b.map(|b| b.map(|v| v / side));
            let patch = postprocess::exemplar_patch(&ex_out.heads(0), norm).expect("patch");
            assert_eq!(
                patch as u64,
                case["query_patch"].as_u64().expect("query_patch"),
                "{what}: query patch"
            );
            let emb = postprocess::exemplar_embedding(&ex_out.heads(0), patch).expect("embedding");

            let out = det
                .run_images(&fixtures::golden_pixels(&pixels, stem(tg_name)), 1)
                .expect("target runs");
            let heads = out.heads(0);
            let logits = postprocess::class_logits(&heads, &[&emb[..]]);
            let want = numbers(&case["logits"]);
            assert_eq!(logits.len(), want.len(), "{what}");
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let d = fixtures::max_abs_diff(&logits, &want);
            assert!(
                d <= 1e-5 * scale,
                "{what}: logits max |Δ| = {d} (scale {scale})"
            );
            let boxes: Vec<f64> = case["target_pred_boxes"]
                .as_array()
                .expect("boxes")
                .iter()
                .flat_map(numbers)
                .collect();
            let d = fixtures::max_abs_diff(heads.pred_boxes, &boxes);
            assert!(d <= 1e-5, "{what}: target_pred_boxes max |Δ| = {d}");
        }
    }
}

fn numbers(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// The same through `Detector::exemplar_embeddings` from decoded images (our preprocessing, within
/// its 1e-4 parity of pixel values): the same query patch's embedding, so logits agree to the
/// end-to-end tolerance.
#[test]
fn decoded_exemplars_give_transformers_logits_end_to_end() {
    for model in ["tiny-a", "tiny-b"] {
        let g = golden(model);
        let mut det = load_detector(&model_dir(model), &DetectorOptions::default()).expect("loads");
        for case in g["cases"].as_array().expect("cases") {
            let ex_name = case["exemplar"].as_str().expect("exemplar");
            let ex = decode(ex_name);
            let tg = decode(case["target"].as_str().expect("target"));
            let emb = det
                .exemplar_embeddings(&[Exemplar {
                    content_key: ex_name,
                    image: &ex,
                    bbox: bbox(&case["box"]),
                }])
                .expect("embedding");
            let s = det.config.image_size;
            let mut px = Vec::with_capacity(3 * s * s);
            det.preprocess_into(&tg, &mut px);
            let out = det.run_images(&px, 1).expect("target runs");
            let q: Vec<&[f32]> = emb.iter().map(|e| &e[..]).collect();
            let logits = postprocess::class_logits(&out.heads(0), &q);
            let want = numbers(&case["logits"]);
            let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            let d = fixtures::max_abs_diff(&logits, &want);
            assert!(
                d <= 2e-3 * scale,
                "{model} {ex_name}: logits max |Δ| = {d} (scale {scale})"
            );
        }
    }
}

#[test]
fn exemplar_embeddings_are_cached_by_content_and_box() {
    let mut det = load_detector(&model_dir("tiny-a"), &DetectorOptions::default()).expect("loads");
    let ex = decode("wide_blur.png");
    let a = Exemplar {
        content_key: "sha256:abc",
        image: &ex,
        bbox: None,
    };
    let boxed = Exemplar {
        bbox: Some([4.0, 2.0, 40.0, 30.0]),
        ..a.clone()
    };
    let first = det
        .exemplar_embeddings(std::slice::from_ref(&a))
        .expect("first");
    let before = det.cache_stats();
    let again = det
        .exemplar_embeddings(&[a.clone(), boxed.clone(), boxed])
        .expect("again");
    let after = det.cache_stats();
    assert!(
        Arc::ptr_eq(&first[0], &again[0]),
        "a hit returns the cached embedding"
    );
    assert_eq!(
        after.hits - before.hits,
        2,
        "the exemplar and the repeated boxed one"
    );
    assert_eq!(after.misses - before.misses, 1, "the boxed exemplar once");
    // The embedding is a unit vector (normalised as transformers' class head does).
    let n: f32 = first[0].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((n - 1.0).abs() < 1e-5, "norm {n}");
    // A text query never collides with an exemplar key.
    assert!(det.query_embeddings(&["sha256:abc".to_string()]).is_ok());
}

#[test]
fn boxes_outside_the_exemplar_or_empty_are_refused() {
    let mut det = load_detector(&model_dir("tiny-a"), &DetectorOptions::default()).expect("loads");
    let ex = decode("small_pad.png"); // 50x30
    for (b, want) in [
        ([0.0, 0.0, 60.0, 10.0], "outside the 50x30 image"),
        ([-1.0, 0.0, 10.0, 10.0], "outside"),
        ([10.0, 10.0, 10.0, 20.0], "is empty"),
        ([f32::NAN, 0.0, 10.0, 10.0], "outside"),
    ] {
        let e = det
            .exemplar_embeddings(&[Exemplar {
                content_key: "x",
                image: &ex,
                bbox: Some(b),
            }])
            .expect_err("refused");
        assert!(matches!(e, PipelineError::Exemplar(_)), "{e:?}");
        assert_eq!(e.kind(), "invalid_exemplar");
        assert!(e.to_string().contains(want), "{b:?}: {e}");
    }
}

/// One exemplar's embedding (no box: its most object-like patch).
fn embed(det: &mut intelligent_video::pipeline::Detector, name: &str) -> Arc<[f32]> {
    let img = decode(name);
    det.exemplar_embeddings(&[Exemplar {
        content_key: name,
        image: &img,
        bbox: None,
    }])
    .expect("embedding")
    .remove(0)
}

/// The largest element-wise difference of two vectors.
fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (p, q)| m.max((p - q).abs()))
}

fn spec(label: Option<&str>, negative: bool) -> ExemplarSpec<'_> {
    ExemplarSpec { label, negative }
}

/// Two exemplars of one label make one query whose direction is their normalised mean: the
/// target's logits equal those of `(a + b) / ‖a + b‖` computed here by hand; two copies of one
/// exemplar are that exemplar.
#[test]
fn exemplars_sharing_a_label_are_averaged_into_one_query() {
    let mut det = load_detector(&model_dir("tiny-a"), &DetectorOptions::default()).expect("loads");
    let a = embed(&mut det, "wide_blur.png");
    let b = embed(&mut det, "exact_a.png");
    let x = Some("x");
    let plan = QueryPlan::build(
        &[],
        Vec::new(),
        &[spec(x, false), spec(x, false)],
        &[a.clone(), b.clone()],
    )
    .expect("plan");
    assert_eq!(plan.labels, vec!["x"]);
    assert_eq!(plan.embeddings.len(), 1);
    let sum: Vec<f32> = a.iter().zip(b.iter()).map(|(p, q)| p + q).collect();
    let n = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    let by_hand: Vec<f32> = sum.iter().map(|v| v / n).collect();
    let tg = decode("photo.jpg");
    let s = det.config.image_size;
    let mut px = Vec::with_capacity(3 * s * s);
    det.preprocess_into(&tg, &mut px);
    let out = det.run_images(&px, 1).expect("runs");
    let ours = postprocess::class_logits(&out.heads(0), &[&plan.embeddings[0][..]]);
    let want = postprocess::class_logits(&out.heads(0), &[&by_hand[..]]);
    let d = max_diff(&ours, &want);
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    assert!(d <= 1e-5 * scale, "averaged logits differ by {d}");
    // Not just one of the two.
    let only_a = postprocess::class_logits(&out.heads(0), &[&a[..]]);
    let da = max_diff(&ours, &only_a);
    assert!(da > 1e-2 * scale, "the mean is not a: {da}");
    // Twice the same exemplar is the exemplar.
    let twice = QueryPlan::build(
        &[],
        Vec::new(),
        &[spec(x, false), spec(x, false)],
        &[a.clone(), a.clone()],
    )
    .expect("plan");
    let d = max_diff(&twice.embeddings[0], &a);
    assert!(d < 1e-5, "{d}");
    // Detections of the averaged query carry its label and index.
    let p = PostParams::new(0.0, None).expect("params");
    let dets = det.detect_embedded(&[&tg], &plan, &p).expect("detects");
    assert!(!dets[0].is_empty());
    assert!(dets[0].iter().all(|d| d.label == "x" && d.query_index == 0));
}

/// A negative exemplar drops exactly the patches whose logit for it is at least the positive
/// query's (counted here from the raw logits), and leaves every other detection as it was.
#[test]
fn a_negative_exemplar_drops_the_patches_it_matches_at_least_as_well() {
    for model in ["tiny-a", "tiny-b"] {
        let mut det = load_detector(&model_dir(model), &DetectorOptions::default()).expect("loads");
        let pos = embed(&mut det, "wide_blur.png");
        let neg = embed(&mut det, "exact_a.png");
        let tg = decode("photo.jpg");
        let p = PostParams::new(0.0, None).expect("params");
        let label = Some("thing");
        let plain = QueryPlan::build(
            &[],
            Vec::new(),
            &[spec(label, false)],
            std::slice::from_ref(&pos),
        )
        .expect("plan");
        let vetoed = QueryPlan::build(
            &[],
            Vec::new(),
            &[spec(label, false), spec(None, true)],
            &[pos.clone(), neg.clone()],
        )
        .expect("plan");
        let all = det
            .detect_embedded(&[&tg], &plain, &p)
            .expect("detects")
            .remove(0);
        let kept = det
            .detect_embedded(&[&tg], &vetoed, &p)
            .expect("detects")
            .remove(0);
        let s = det.config.image_size;
        let mut px = Vec::with_capacity(3 * s * s);
        det.preprocess_into(&tg, &mut px);
        let out = det.run_images(&px, 1).expect("runs");
        let lp = postprocess::class_logits(&out.heads(0), &[&pos[..]]);
        let ln = postprocess::class_logits(&out.heads(0), &[&neg[..]]);
        let dropped = lp.iter().zip(&ln).filter(|(p, n)| n >= p).count();
        assert!(
            dropped > 0 && dropped < all.len(),
            "{model}: the fixture must split ({dropped} of {})",
            all.len()
        );
        assert_eq!(kept.len(), all.len() - dropped, "{model}");
        for k in &kept {
            assert!(
                all.contains(k),
                "{model}: a kept detection is unchanged: {k:?}"
            );
        }
        // The counter-example equal to the example vetoes everything; one aimed at another label
        // is refused when no query has that label.
        let same = QueryPlan::build(
            &[],
            Vec::new(),
            &[spec(label, false), spec(None, true)],
            &[pos.clone(), pos.clone()],
        )
        .expect("plan");
        assert!(det.detect_embedded(&[&tg], &same, &p).expect("detects")[0].is_empty());
        let e = QueryPlan::build(
            &[],
            Vec::new(),
            &[spec(label, false), spec(Some("other"), true)],
            &[pos.clone(), neg.clone()],
        )
        .expect_err("no such label");
        assert!(e.to_string().contains("names no query"), "{e}");
    }
}

mod api {
    //! `POST /v1/detect` with `query_images`: the same answer as the CLI, cache hits on repeats,
    //! and clear 400s.
    use base64::Engine as _;

    use crate::support::daemon::Daemon;
    use crate::support::{bin, fixtures};

    fn b64(name: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(fixtures::image(name))
    }

    fn post(d: &Daemon, body: &serde_json::Value) -> crate::support::daemon::Response {
        d.request(
            "POST",
            "/v1/detect?threshold=0",
            Some("application/json"),
            body.to_string().as_bytes(),
        )
    }

    fn metric(text: &str, name: &str) -> f64 {
        crate::support::metrics::value(text, name, &[]).unwrap_or(0.0)
    }

    #[test]
    fn query_images_in_json_answer_as_the_cli_and_hit_the_cache() {
        let mut d = Daemon::start(&[]);
        d.wait_ready();
        let body = serde_json::json!({
            "image_base64": b64("small_pad.png"),
            "queries": ["a photo of a cat"],
            "query_images": [
                {"image_base64": b64("wide_blur.png")},
                {"image_base64": b64("exact_a.png"), "box": [10, 10, 30, 40], "label": "letter"},
            ],
        });
        let r = post(&d, &body);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let api = r.json();
        // The CLI with the same queries gives the same detections.
        let boxed = format!(
            "{}#10,10,30,40",
            fixtures::image_path("exact_a.png").display()
        );
        let out = bin::command()
            .args(["detect", "--threshold", "0", "--model"])
            .arg(fixtures::model_dir("tiny-a"))
            .args(["--query", "a photo of a cat", "--query-image"])
            .arg(fixtures::image_path("wide_blur.png"))
            .args([
                "--query-image",
                &boxed,
                "--label",
                "image:0",
                "--label",
                "letter",
            ])
            .arg(fixtures::image_path("small_pad.png"))
            .output()
            .expect("cli runs");
        bin::assert_success(&out);
        let cli: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        let key = |v: &serde_json::Value| {
            v["detections"]
                .as_array()
                .expect("detections")
                .iter()
                .map(|x| {
                    (
                        x["label"].to_string(),
                        x["query_index"].as_u64(),
                        x["score"].as_f64(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let (a, c) = (key(&api), key(&cli));
        assert_eq!(a.len(), c.len());
        for (x, y) in a.iter().zip(&c) {
            assert_eq!((&x.0, x.1), (&y.0, y.1));
            assert!(
                (x.2.unwrap_or(0.0) - y.2.unwrap_or(1.0)).abs() < 1e-6,
                "{x:?} {y:?}"
            );
        }
        assert!(a.iter().any(|x| x.0 == "\"letter\""), "{a:?}");

        // The same exemplars again: two cache hits (plus the text query's), no miss.
        let before = d.metrics();
        let r = post(&d, &body);
        assert_eq!(r.status, 200);
        let after = d.metrics();
        let hits = metric(&after, "iv_query_cache_hits_total")
            - metric(&before, "iv_query_cache_hits_total");
        let misses = metric(&after, "iv_query_cache_misses_total")
            - metric(&before, "iv_query_cache_misses_total");
        assert_eq!((hits, misses), (3.0, 0.0));
    }

    #[test]
    fn bad_query_images_get_clear_400s() {
        let mut d = Daemon::start(&[("IV_MAX_QUERY_IMAGES", "2")]);
        d.wait_ready();
        let ex = |v: serde_json::Value| serde_json::json!({"image_base64": b64("small_pad.png"), "query_images": v});
        let good = serde_json::json!({"image_base64": b64("wide_blur.png")});
        let cases = [
            (
                ex(serde_json::json!([{"image_base64": "!!"}])),
                "invalid_base64",
                "query_images[0]",
            ),
            (
                ex(
                    serde_json::json!([{"image_base64": base64::engine::general_purpose::STANDARD.encode(b"not an image")}]),
                ),
                "invalid_parameter",
                "query_images[0]",
            ),
            (
                ex(
                    serde_json::json!([good, {"image_base64": b64("small_pad.png"), "box": [0, 0, 500, 10]}]),
                ),
                "invalid_parameter",
                "outside the 50x30 image",
            ),
            (
                ex(
                    serde_json::json!([{"image_base64": b64("small_pad.png"), "box": [5, 5, 5, 9]}]),
                ),
                "invalid_parameter",
                "is empty",
            ),
            (
                ex(serde_json::json!([good, good, good])),
                "invalid_parameter",
                "max_query_images",
            ),
            (
                ex(serde_json::json!([{"image_base64": b64("wide_blur.png"), "negative": true}])),
                "missing_query",
                "at least one query",
            ),
            (
                serde_json::json!({"image_base64": b64("small_pad.png"), "queries": ["a cat"],
                    "query_images": [{"image_base64": b64("wide_blur.png"), "negative": true, "label": "a dog"}]}),
                "invalid_parameter",
                "names no query",
            ),
            (
                serde_json::json!({"image_base64": b64("small_pad.png"), "queries": ["a cat"],
                    "query_images": [{"image_base64": b64("wide_blur.png"), "label": "a cat"}]}),
                "invalid_parameter",
                "also a text query",
            ),
            (
                ex(serde_json::json!([{"image_base64": b64("wide_blur.png"), "scale": 2}])),
                "invalid_json",
                "unknown field",
            ),
        ];
        for (body, kind, text) in cases {
            let r = post(&d, &body);
            let j = r.json();
            assert_eq!(r.status, 400, "{kind}: {j}");
            assert_eq!(j["error"]["kind"], kind, "{j}");
            let msg = j["error"]["message"].as_str().unwrap_or("");
            assert!(msg.contains(text), "{text:?} not in {msg:?}");
        }
        // And the daemon still serves.
        let r = post(&d, &ex(serde_json::json!([good])));
        assert_eq!(r.status, 200);
    }
}
