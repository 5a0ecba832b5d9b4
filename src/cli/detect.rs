//! `intelligent-video detect`: offline detection on image files, one JSON line per image.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use serde::Serialize;

use super::RuntimeArgs;
use crate::engine::{load_detector, DetectorOptions};
use crate::model::tokenizer::{QueryRules, MAX_QUERY_BYTES};
use crate::postprocess::{Detection, PostParams};
use crate::preprocess::{self, ImageLimits};
use crate::vocab::Precision;

#[derive(Debug, Clone, clap::Args)]
pub struct DetectArgs {
    /// Model directory (config.json, model.safetensors, preprocessor_config.json, tokenizer).
    #[arg(long)]
    pub model: PathBuf,
    /// Keep detections whose score is strictly above this.
    #[arg(long, default_value_t = 0.1)]
    pub threshold: f32,
    /// Apply per-query non-maximum suppression with this IoU threshold (off by default).
    #[arg(long)]
    pub nms: Option<f32>,
    /// A text query; repeat for several.
    #[arg(long = "query", required = true)]
    pub queries: Vec<String>,
    /// Largest accepted image file in bytes.
    #[arg(long, default_value_t = ImageLimits::default().max_encoded_bytes)]
    pub max_image_bytes: usize,
    /// Largest accepted image in pixels (width × height).
    #[arg(long, default_value_t = ImageLimits::default().max_pixels)]
    pub max_pixels: u64,
    /// Largest accepted image side in pixels.
    #[arg(long, default_value_t = ImageLimits::default().max_side)]
    pub max_side: u32,
    /// Rotate images by their EXIF orientation tag first (default: pixels as stored, as
    /// transformers takes them).
    #[arg(long)]
    pub apply_exif_orientation: bool,
    /// Image-tower precision: fp32 (exact, default), int8 (quantized encoder projections) or bf16
    /// (arm64 CPUs with BF16: bf16 GEMMs).
    #[arg(long, default_value = "fp32", value_parser = super::cpu_precision)]
    pub precision: Precision,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Image files (JPEG, PNG, WebP, BMP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// One output line.
#[derive(Debug, Serialize)]
pub struct ImageResult<'a> {
    pub image: String,
    pub width: u32,
    pub height: u32,
    pub detections: &'a [Detection],
}

/// Runs the command; returns the number of images that failed.
pub fn run(args: &DetectArgs) -> anyhow::Result<usize> {
    let params = PostParams::new(args.threshold, args.nms).map_err(anyhow::Error::msg)?;
    let limits = ImageLimits {
        max_encoded_bytes: args.max_image_bytes,
        max_pixels: args.max_pixels,
        max_side: args.max_side,
        apply_exif_orientation: args.apply_exif_orientation,
    };
    let opts = DetectorOptions {
        precision: args.precision,
        ..args.runtime.detector_options()
    };
    let mut det = load_detector(&args.model, &opts)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    // Any number of queries on the command line; each within the tokenizer's guard.
    let rules = QueryRules {
        max_queries: args.queries.len().max(1),
        max_query_bytes: MAX_QUERY_BYTES,
    };
    rules.check(&args.queries).context("invalid query")?;
    det.query_embeddings(&args.queries)
        .context("invalid query")?;
    let stdout = std::io::stdout();
    let mut failed = 0;
    for path in &args.images {
        let result = (|| -> anyhow::Result<()> {
            let meta = std::fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if meta.len() > limits.max_encoded_bytes as u64 {
                bail!(
                    "{}: file is {} bytes, more than the limit of {}",
                    path.display(),
                    meta.len(),
                    limits.max_encoded_bytes
                );
            }
            let bytes =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let img =
                preprocess::decode(&bytes, &limits).with_context(|| path.display().to_string())?;
            let dets = det
                .detect(&[&img], &args.queries, &rules, &params)
                .with_context(|| path.display().to_string())?;
            let line = serde_json::to_string(&ImageResult {
                image: path.display().to_string(),
                width: img.width,
                height: img.height,
                detections: dets.first().map(Vec::as_slice).unwrap_or(&[]),
            })?;
            let mut out = stdout.lock();
            writeln!(out, "{line}")?;
            out.flush()?;
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("error: {e:#}");
            failed += 1;
        }
    }
    Ok(failed)
}
