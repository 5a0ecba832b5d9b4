//! The saved CPU artifact (both graphs optimised by ONNX Runtime, weights and prepacked weights in
//! the cache entry) computes what the in-memory build computes, and still matches transformers'
//! goldens; a loaded artifact needs nothing from the checkpoint's weights.

use crate::support::fixtures::{
    golden_json, golden_pixels, golden_queries, goldens, max_abs_diff, model_dir,
};
use intelligent_video::engine::{load_detector_with, Artifact, DetectorOptions};
use intelligent_video::pipeline::Detector;

fn load(model: &str, artifact: Artifact) -> Detector {
    load_detector_with(&model_dir(model), &DetectorOptions::default(), &artifact)
        .expect("model loads")
}

#[test]
fn saved_artifact_matches_in_memory_build_and_goldens() {
    for model in ["tiny-a", "tiny-b"] {
        let j = golden_json(model);
        let g = goldens(model);
        let qs = golden_queries(&j);
        let entry = tempfile::tempdir().expect("tmp");
        let mut fresh = load(model, Artifact::None);
        let mut saved = load(model, Artifact::Save(entry.path().to_path_buf()));
        for f in ["image.onnx", "image.weights", "text.onnx", "text.weights"] {
            let len = std::fs::metadata(entry.path().join(f))
                .map(|m| m.len())
                .unwrap_or(0);
            assert!(len > 0, "{model}: {f} written");
        }
        drop(saved.query_embeddings(&qs).expect("embeddings"));
        let mut loaded = load(model, Artifact::Load(entry.path().to_path_buf()));

        let a = fresh.query_embeddings(&qs).expect("embeddings");
        let b = loaded.query_embeddings(&qs).expect("embeddings");
        let fa: Vec<f32> = a.iter().flat_map(|e| e.iter().copied()).collect();
        let fb: Vec<f32> = b.iter().flat_map(|e| e.iter().copied()).collect();
        let fb64: Vec<f64> = fb.iter().map(|v| f64::from(*v)).collect();
        // Loaded artifact vs in-memory build: the same graphs and weights on the same engine, so
        // 1e-6 (far tighter than the README's parity bounds, which the golden checks use).
        let d = max_abs_diff(&fa, &fb64);
        assert!(
            d <= 1e-6,
            "{model}: loaded vs fresh query_embeds max |Δ| = {d}"
        );
        let d = max_abs_diff(&fb, &g["query_embeds"].data);
        assert!(
            d <= 1e-5,
            "{model}: loaded query_embeds vs golden max |Δ| = {d}"
        );

        for img in j["images"].as_array().expect("images") {
            let name = img["name"].as_str().expect("name");
            let px = golden_pixels(&g, name);
            let x = fresh.run_images(&px, 1).expect("runs");
            let y = loaded.run_images(&px, 1).expect("runs");
            let y64: Vec<f64> = y.class_embeds.iter().map(|v| f64::from(*v)).collect();
            let d = max_abs_diff(&x.class_embeds, &y64);
            assert!(
                d <= 1e-6,
                "{model}/{name}: class_embeds loaded vs fresh {d}"
            );
            let d = max_abs_diff(&y.pred_boxes, &g[&format!("pred_boxes/{name}")].data);
            assert!(d <= 1e-5, "{model}/{name}: loaded pred_boxes vs golden {d}");
            let d = max_abs_diff(&y.class_embeds, &g[&format!("class_embeds/{name}")].data);
            assert!(
                d <= 1e-5,
                "{model}/{name}: loaded class_embeds vs golden {d}"
            );
        }
    }
}

#[test]
fn loaded_artifact_does_not_read_the_checkpoint_weights() {
    // Copy the model, save an artifact, then corrupt the copy's weights (same size, same header):
    // the loaded engine still answers like the original, so nothing came from the checkpoint.
    let src = model_dir("tiny-a");
    let copy = tempfile::tempdir().expect("tmp");
    for e in std::fs::read_dir(&src).expect("model dir") {
        let p = e.expect("entry").path();
        if p.is_file() {
            std::fs::copy(&p, copy.path().join(p.file_name().expect("name"))).expect("copy");
        }
    }
    let entry = tempfile::tempdir().expect("tmp");
    let opts = |artifact: Artifact| {
        load_detector_with(copy.path(), &DetectorOptions::default(), &artifact)
    };
    let qs = vec!["a photo of a cat".to_string()];
    let mut saved = opts(Artifact::Save(entry.path().into())).expect("saves");
    let want = saved.query_embeddings(&qs).expect("embeddings")[0].to_vec();
    drop(saved);
    let st = copy.path().join("model.safetensors");
    let mut bytes = std::fs::read(&st).expect("read");
    let header = 8 + u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    for b in &mut bytes[header..] {
        *b = 0;
    }
    std::fs::write(&st, &bytes).expect("write");
    let mut loaded = opts(Artifact::Load(entry.path().into())).expect("loads");
    let got = loaded.query_embeddings(&qs).expect("embeddings")[0].to_vec();
    assert_eq!(got, want);
    // And the zeroed checkpoint really does compute something else when built.
    let mut rebuilt = opts(Artifact::None).expect("builds");
    let other = rebuilt.query_embeddings(&qs).expect("embeddings")[0].to_vec();
    assert_ne!(other, want);
}
