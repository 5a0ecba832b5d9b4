//! Fixture paths (`models/fixtures`) and readers for the golden files written by
//! `models/fixtures/generate.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// `models/fixtures` of this checkout.
pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures")
}

/// A fixture model directory (`tiny-a`, `tiny-b`).
pub(crate) fn model_dir(name: &str) -> PathBuf {
    fixtures().join(name)
}

/// A fixture image's path (`images/<name>`).
pub(crate) fn image_path(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}

/// A fixture image's bytes.
pub(crate) fn image(name: &str) -> Vec<u8> {
    let p = image_path(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A golden tensor's values, flattened, as f64 (f32 and i64 goldens both fit).
#[derive(Debug, Clone)]
pub(crate) struct Golden {
    pub(crate) data: Vec<f64>,
}

/// Reads every tensor of `golden/<model>.safetensors`.
pub(crate) fn goldens(model: &str) -> HashMap<String, Golden> {
    let path = fixtures()
        .join("golden")
        .join(format!("{model}.safetensors"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("golden safetensors");
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let raw = view.data();
        let data: Vec<f64> = match view.dtype() {
            safetensors::Dtype::F32 => raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            safetensors::Dtype::I64 => raw
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f64)
                .collect(),
            safetensors::Dtype::U8 => raw.iter().map(|&b| b as f64).collect(),
            other => panic!("unexpected golden dtype {other:?} for {name}"),
        };
        out.insert(name.to_string(), Golden { data });
    }
    out
}

/// Reads `golden/<model>.json`.
pub(crate) fn golden_json(model: &str) -> serde_json::Value {
    let path = fixtures().join("golden").join(format!("{model}.json"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("golden json")
}

/// The queries of `golden/<model>.json`.
pub(crate) fn golden_queries(j: &serde_json::Value) -> Vec<String> {
    j["queries"]
        .as_array()
        .expect("queries")
        .iter()
        .map(|q| q.as_str().expect("str").to_string())
        .collect()
}

/// transformers' `pixel_values` of golden image `name`, as the image graph's input.
pub(crate) fn golden_pixels(g: &HashMap<String, Golden>, name: &str) -> Vec<f32> {
    g[&format!("pixel_values/{name}")]
        .data
        .iter()
        .map(|v| *v as f32)
        .collect()
}

/// Largest absolute difference; panics on a length mismatch.
pub(crate) fn max_abs_diff(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - y).abs())
        .fold(0.0, f64::max)
}
