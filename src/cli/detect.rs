//! `intelligent-video detect`: offline detection on image files, one JSON line per image.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde::Serialize;

use super::args::RuntimeArgs;
use crate::config::{Config, ConfigOverrides};
use crate::engine::{load_detector, DetectorOptions};
use crate::model::tokenizer::{QueryRules, MAX_QUERY_BYTES};
use crate::pipeline::{
    Detector, Exemplar, ExemplarSource, ExemplarSpec, PlannedExemplar, QueryPlan,
};
use crate::postprocess::{Detection, PostParams};
use crate::preprocess::{self, ImageLimits, Rgb};
use crate::video::draw::{self, Annotation};
use crate::vocab::Precision;

#[derive(Debug, Clone, clap::Args)]
pub struct DetectArgs {
    /// Model directory (config.json, model.safetensors, preprocessor_config.json, tokenizer);
    /// default: the configured model (`model` in the config file, `IV_MODEL`) from the store, as
    /// `serve` loads it.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Config file for the default model (default: /etc/intelligent-video/config.toml if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Keep detections whose score is strictly above this.
    #[arg(long, default_value_t = 0.1)]
    pub threshold: f32,
    /// Apply per-query non-maximum suppression with this IoU threshold (off by default).
    #[arg(long)]
    pub nms: Option<f32>,
    /// A text query; repeat for several.
    #[arg(long = "query", required_unless_present = "query_images")]
    pub queries: Vec<String>,
    /// An example image as a query (query by example): `PATH`, or `PATH#x0,y0,x1,y1` for the
    /// object in that box (exemplar pixels); repeat for several, mix with --query.
    #[arg(long = "query-image", value_parser = parse_query_image)]
    pub query_images: Vec<QueryImage>,
    /// Label of the n-th --query-image (in order; default `image:<n>`, counting from 0).
    /// Query images given the same label are averaged into one query.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// A counter-example image (`PATH` or `PATH#x0,y0,x1,y1`): a match that looks at least as
    /// much like it as like its query is dropped, for every query; repeatable.
    #[arg(long = "negative-image", value_parser = parse_query_image)]
    pub negative_images: Vec<QueryImage>,
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
    #[arg(long, default_value = "fp32", value_parser = super::args::cpu_precision)]
    pub precision: Precision,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    /// Also write each image with its detections drawn (boxes, labels, scores; the stream
    /// snapshot's drawing): a `.png`, `.jpg` or `.jpeg` file for one image, or an existing folder
    /// (one `<name>.png` per image, `.jpg` for JPEG inputs).
    #[arg(long, value_name = "OUT")]
    pub draw: Option<PathBuf>,
    /// Image files (JPEG, PNG, WebP, BMP).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
}

/// `--query-image PATH[#x0,y0,x1,y1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryImage {
    pub path: PathBuf,
    pub bbox: Option<[f32; 4]>,
}

fn parse_query_image(s: &str) -> Result<QueryImage, String> {
    let Some((path, b)) = s.rsplit_once('#') else {
        return Ok(QueryImage {
            path: s.into(),
            bbox: None,
        });
    };
    let v: Vec<f32> = b
        .split(',')
        .map(|x| x.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{b:?} is not a box: use PATH#x0,y0,x1,y1 (exemplar pixels)"))?;
    let [x0, y0, x1, y1] = v[..] else {
        return Err(format!(
            "{b:?} is not a box: use PATH#x0,y0,x1,y1 (exemplar pixels)"
        ));
    };
    Ok(QueryImage {
        path: path.into(),
        bbox: Some([x0, y0, x1, y1]),
    })
}

/// Reads an image file within `limits`.
fn read_image(
    path: &std::path::Path,
    limits: &ImageLimits,
) -> anyhow::Result<(Vec<u8>, preprocess::Rgb)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > limits.max_encoded_bytes as u64 {
        bail!(
            "{}: file is {} bytes, more than the limit of {}",
            path.display(),
            meta.len(),
            limits.max_encoded_bytes
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let img = preprocess::decode(&bytes, limits).with_context(|| path.display().to_string())?;
    Ok((bytes, img))
}

/// One `--query-image` or `--negative-image`, read: its content key and decoded image.
fn read_exemplar(q: &QueryImage, limits: &ImageLimits) -> anyhow::Result<(String, Rgb)> {
    let (bytes, img) = read_image(&q.path, limits).context("invalid query image")?;
    Ok((Exemplar::content_key(&bytes), img))
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
    // Where each drawing goes, checked before the model loads.
    let targets: Vec<Option<PathBuf>> = match &args.draw {
        Some(out) => args
            .images
            .iter()
            .map(|p| draw_target(out, p, args.images.len()).map(Some))
            .collect::<anyhow::Result<_>>()?,
        None => vec![None; args.images.len()],
    };
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
    let model = match &args.model {
        Some(dir) => dir.clone(),
        None => configured_model(args.config.as_deref())?,
    };
    let mut det = load_detector(&model, &opts)
        .with_context(|| format!("cannot load model {}", model.display()))?;
    let plan = query_plan(args, &mut det, &limits)?;
    let mut failed = 0;
    for (path, target) in args.images.iter().zip(&targets) {
        if let Err(e) = detect_one(&mut det, &plan, &params, &limits, path, target.as_deref()) {
            eprintln!("error: {e:#}");
            failed += 1;
        }
    }
    Ok(failed)
}

/// The queries of the command line (texts, then query images and negative images) planned for
/// `det`.
fn query_plan(
    args: &DetectArgs,
    det: &mut Detector,
    limits: &ImageLimits,
) -> anyhow::Result<QueryPlan> {
    // Any number of queries on the command line; each within the tokenizer's guard.
    let rules = QueryRules {
        max_queries: args.queries.len().max(1),
        max_query_bytes: MAX_QUERY_BYTES,
    };
    if !args.queries.is_empty() {
        rules.check(&args.queries).context("invalid query")?;
    }
    if args.labels.len() > args.query_images.len() {
        bail!(
            "{} --label for {} --query-image (each --label names one query image, in order)",
            args.labels.len(),
            args.query_images.len()
        );
    }
    let labels: Vec<String> = (0..args.query_images.len())
        .map(|n| {
            args.labels
                .get(n)
                .cloned()
                .unwrap_or_else(|| Exemplar::default_label(n))
        })
        .collect();
    let mut specs: Vec<ExemplarSpec<'_>> = labels
        .iter()
        .map(|l| ExemplarSpec {
            label: Some(l),
            negative: false,
        })
        .collect();
    specs.extend(args.negative_images.iter().map(|_| ExemplarSpec {
        label: None,
        negative: true,
    }));
    let images = args.query_images.iter().chain(&args.negative_images);
    let read: Vec<(String, Rgb)> = images
        .clone()
        .map(|q| read_exemplar(q, limits))
        .collect::<anyhow::Result<_>>()?;
    let exemplars: Vec<PlannedExemplar<'_>> = specs
        .iter()
        .zip(images.zip(&read))
        .map(|(spec, (q, (key, image)))| PlannedExemplar {
            spec: *spec,
            source: ExemplarSource::Image(Exemplar {
                content_key: key,
                image,
                bbox: q.bbox,
            }),
        })
        .collect();
    det.plan(&args.queries, &exemplars)
        .context("invalid query or query images")
}

/// Detects in one image and prints its line.
fn detect_one(
    det: &mut Detector,
    plan: &QueryPlan,
    params: &PostParams,
    limits: &ImageLimits,
    path: &Path,
    draw_to: Option<&Path>,
) -> anyhow::Result<()> {
    let (_, img) = read_image(path, limits)?;
    let dets = det
        .detect_embedded(&[&img], plan, params)
        .with_context(|| path.display().to_string())?;
    if let Some(target) = draw_to {
        write_drawn(&img, dets.first().map(Vec::as_slice).unwrap_or(&[]), target)
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    let line = serde_json::to_string(&ImageResult {
        image: path.display().to_string(),
        width: img.width,
        height: img.height,
        detections: dets.first().map(Vec::as_slice).unwrap_or(&[]),
    })?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}

/// Where `--draw OUT` puts the drawing of `image`: `OUT` itself for one image (a `.png`, `.jpg`
/// or `.jpeg` file), else a file named after the image in the folder `OUT`.
fn draw_target(out: &Path, image: &Path, images: usize) -> anyhow::Result<PathBuf> {
    if out.is_dir() {
        let stem = image.file_stem().unwrap_or_default().to_string_lossy();
        let jpeg = matches!(image_format(image), Some(DrawFormat::Jpeg));
        return Ok(out.join(format!("{stem}.{}", if jpeg { "jpg" } else { "png" })));
    }
    if images > 1 {
        bail!(
            "--draw {}: with several images, --draw names an existing folder",
            out.display()
        );
    }
    if image_format(out).is_none() {
        bail!(
            "--draw {}: the file name must end in .png, .jpg or .jpeg (or name an existing folder)",
            out.display()
        );
    }
    Ok(out.to_path_buf())
}

/// The encodings `--draw` writes.
enum DrawFormat {
    Png,
    Jpeg,
}

fn image_format(path: &Path) -> Option<DrawFormat> {
    let ext = path.extension()?.to_string_lossy().to_ascii_lowercase();
    match ext.as_str() {
        "png" => Some(DrawFormat::Png),
        "jpg" | "jpeg" => Some(DrawFormat::Jpeg),
        _ => None,
    }
}

/// Writes `img` with `dets` drawn to `target` (PNG or JPEG by its extension).
fn write_drawn(img: &Rgb, dets: &[Detection], target: &Path) -> anyhow::Result<()> {
    let anns: Vec<Annotation> = dets.iter().map(|d| Annotation::of(d, None)).collect();
    let mut data = img.data.clone();
    draw::annotate(img.width, img.height, &mut data, &anns)?;
    let bytes = match image_format(target) {
        Some(DrawFormat::Jpeg) => draw::encode_jpeg(img.width, img.height, &data, 90)?,
        _ => draw::encode_png(img.width, img.height, &data)?,
    };
    crate::fsutil::write_file_atomic(target, &bytes)?;
    Ok(())
}

/// The configured model's folder in the store (what `serve` loads), said on stderr.
fn configured_model(config: Option<&Path>) -> anyhow::Result<PathBuf> {
    let cfg = Config::load(config, &ConfigOverrides::default()).context("invalid configuration")?;
    let dir = cfg.installed_model_dir().map_err(anyhow::Error::msg)?;
    eprintln!(
        "using the configured model {} ({}); --model DIR picks another",
        cfg.model,
        dir.display()
    );
    Ok(dir)
}
