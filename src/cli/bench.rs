//! `intelligent-video bench`: throughput and latency of the image side (preprocessing and the image
//! graph) on this machine, optionally beside the eager baseline (`--compare`). Text queries are
//! cached in the daemon, so they are not part of a frame's cost and are not measured here.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use super::args::RuntimeArgs;
use crate::engine::{load_detector, DetectorOptions};
use crate::pipeline::Detector;
use crate::preprocess::{self, ImageLimits, Rgb};
use crate::vocab::{BackendPreference, Precision};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Model directory.
    #[arg(long)]
    pub model: PathBuf,
    /// Images to run through the image graph (per side with --compare).
    #[arg(long, default_value_t = 20)]
    pub num_images: usize,
    /// Images per inference batch.
    #[arg(long, default_value_t = 1)]
    pub batch_size: usize,
    /// Also measure the eager baseline (basic graph optimisations only) and report the speedup.
    #[arg(long)]
    pub compare: bool,
    /// Encoded image used for the preprocessing measurement (default: a synthetic 1920×1080 frame).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Backend, chosen like the daemon's `IV_OPTIMIZATION_BACKEND` (auto: TensorRT → TensorRT-RTX → CUDA → CPU,
    /// skipping tiers this machine cannot run; the skipped ones are reported).
    #[arg(long, value_enum, default_value = "auto")]
    pub backend: BackendPreference,
    /// Image-tower precision: fp32 (exact), int8 (quantized encoder projections; CPU only) or bf16
    /// (arm64 CPUs with BF16: bf16 GEMMs).
    #[arg(long, default_value = "fp32", value_parser = super::args::cpu_precision)]
    pub precision: Precision,
    /// OpenVINO's inference precision with `--backend openvino`: fp32 (exact) or bf16 (CPUs with
    /// AVX512-BF16/AMX, arm64 BF16); bf16 reports its drift against ONNX Runtime's fp32 engine.
    #[arg(long, default_value = "fp32", value_parser = super::args::openvino_precision)]
    pub openvino_precision: Precision,
    /// Attention form of the CPU/CUDA image graph: `fused` (ONNX Runtime's MultiHeadAttention,
    /// the daemon's) or `unfused` (MatMul, Softmax, MatMul), to compare on this host.
    #[arg(long, value_enum, default_value = "fused")]
    pub attention: crate::model::graphs::Attention,
    /// Record ONNX Runtime's per-node profile of the optimized image session into this folder
    /// and print the time per op type (CPU provider only; the first, warm-up run is left out;
    /// profiling adds a little overhead of its own).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub mean_ms: f64,
    pub min_ms: f64,
}

fn summarize(mut v: Vec<Duration>) -> Latency {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pick = |p: f64| ms(v[((v.len() as f64 - 1.0) * p).round() as usize]);
    Latency {
        p50_ms: pick(0.5),
        p95_ms: pick(0.95),
        mean_ms: v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64,
        min_ms: ms(v[0]),
    }
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize)]
pub struct SideResult {
    pub mode: &'static str,
    pub load_s: f64,
    pub images: usize,
    pub batch_size: usize,
    pub images_per_s: f64,
    pub batch_latency: Latency,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: String,
    /// The engine's precision (`--precision`).
    pub precision: Precision,
    /// GPU tiers skipped by `--backend auto|tensorrt|cuda`, with the reason.
    pub fallbacks: Vec<crate::engine::Fallback>,
    pub image_size: usize,
    pub threads: usize,
    pub preprocess_image: String,
    pub decode_and_preprocess: Latency,
    pub preprocess_only: Latency,
    pub optimized: SideResult,
    pub eager: Option<SideResult>,
    pub speedup: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    /// With `--precision int8`: drift of every patch's score and box against the exact fp32 engine.
    pub int8_drift: Option<Drift>,
    /// With `--precision bf16` (arm64): the same against fp32.
    pub bf16_drift: Option<Drift>,
    /// This host's CPU model and SIMD flags (which kernels ran).
    pub cpu_model: Option<String>,
    pub cpu_flags: Vec<&'static str>,
    /// With `--profile`: the optimized image session's time per op type.
    pub profile: Option<super::ort_profile::ProfileSummary>,
    /// What a stream's tracker adds to each frame, measured in this run.
    pub tracking: TrackingCost,
    /// What 10 zones, 10 lines and publishing their events add to each frame, measured in
    /// this run.
    pub rules: RulesCost,
    /// The run in one line a person can paste (the text report's last line).
    pub summary: String,
}

/// The rules and their publishing on the tracking scene, against one image's inference.
#[derive(Debug, Clone, Serialize)]
pub struct RulesCost {
    pub objects: usize,
    pub zones: usize,
    pub lines: usize,
    pub events_per_frame: f64,
    pub frame_us: f64,
    /// `frame_us` over the optimized engine's p50 batch latency per image.
    pub share_of_frame: f64,
}

/// One tracker update on a busy synthetic scene, against one image's inference.
#[derive(Debug, Clone, Serialize)]
pub struct TrackingCost {
    /// Objects in the scene (each with a duplicate box and a low-score box).
    pub objects: usize,
    pub update_us: f64,
    /// `update_us` over the optimized engine's p50 batch latency per image.
    pub share_of_frame: f64,
}

/// Objects of the tracking scene: a crowded camera.
const TRACKING_OBJECTS: usize = 50;

fn tracking_cost(optimized: &SideResult) -> TrackingCost {
    let update_us = crate::video::track::bench::update_cost(TRACKING_OBJECTS).as_secs_f64() * 1e6;
    let frame_us = optimized.batch_latency.p50_ms * 1e3 / optimized.batch_size.max(1) as f64;
    TrackingCost {
        objects: TRACKING_OBJECTS,
        update_us,
        share_of_frame: update_us / frame_us,
    }
}

fn rules_cost(optimized: &SideResult) -> RulesCost {
    let (cost, events) = crate::video::rules::bench::frame_cost(TRACKING_OBJECTS);
    let frame_us = cost.as_secs_f64() * 1e6;
    let image_us = optimized.batch_latency.p50_ms * 1e3 / optimized.batch_size.max(1) as f64;
    RulesCost {
        objects: TRACKING_OBJECTS,
        zones: crate::video::rules::bench::RULES,
        lines: crate::video::rules::bench::RULES,
        events_per_frame: events,
        frame_us,
        share_of_frame: frame_us / image_us,
    }
}

/// Per-patch difference between two engines on the same frame and queries.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub patches: usize,
    pub max_score: f64,
    pub mean_score: f64,
    /// Largest box-corner difference divided by max(H, W).
    pub max_box_rel: f64,
    pub mean_box_rel: f64,
    /// Fraction of patches whose best query is the same.
    pub same_label: f64,
}

const DRIFT_QUERIES: [&str; 3] = ["a person", "a forklift", "a red car"];

fn patch_outputs(det: &mut Detector, frame: &Rgb) -> anyhow::Result<Vec<(usize, f32, [f32; 4])>> {
    let qs: Vec<String> = DRIFT_QUERIES.iter().map(|s| s.to_string()).collect();
    let emb = det.query_embeddings(&qs)?;
    let q: Vec<&[f32]> = emb.iter().map(|e| &e[..]).collect();
    let mut px = Vec::new();
    det.preprocess_into(frame, &mut px);
    let out = det.run_images(&px, 1)?;
    Ok(crate::postprocess::patch_predictions(
        &out.heads(0),
        &q,
        frame.width,
        frame.height,
    ))
}

fn drift(a: &[(usize, f32, [f32; 4])], b: &[(usize, f32, [f32; 4])], side: f64) -> Drift {
    let n = a.len().min(b.len()).max(1);
    let (mut ms, mut ss, mut mb, mut sb, mut same) = (0f64, 0f64, 0f64, 0f64, 0usize);
    for (x, y) in a.iter().zip(b) {
        let ds = (x.1 as f64 - y.1 as f64).abs();
        ms = ms.max(ds);
        ss += ds;
        let db = (0..4)
            .map(|k| (x.2[k] as f64 - y.2[k] as f64).abs() / side)
            .fold(0.0, f64::max);
        mb = mb.max(db);
        sb += db;
        same += usize::from(x.0 == y.0);
    }
    Drift {
        patches: n,
        max_score: ms,
        mean_score: ss / n as f64,
        max_box_rel: mb,
        mean_box_rel: sb / n as f64,
        same_label: same as f64 / n as f64,
    }
}

/// Peak resident set size of this process (VmHWM), in MiB.
pub fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A deterministic textured frame.
pub fn synthetic_frame(w: u32, h: u32) -> Rgb {
    let mut data = Vec::with_capacity((w * h * 3) as usize);
    let mut x: u32 = 12345;
    for yy in 0..h {
        for xx in 0..w {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let n = (x & 31) as u8;
            data.extend_from_slice(&[
                (xx / 8) as u8 ^ n,
                (yy / 5) as u8 ^ n,
                ((xx + yy) / 11) as u8 ^ n,
            ]);
        }
    }
    Rgb {
        width: w,
        height: h,
        data,
    }
}

struct Progress {
    on: bool,
    label: &'static str,
    total: usize,
}

impl Progress {
    fn new(label: &'static str, total: usize, quiet: bool) -> Self {
        Progress {
            on: !quiet && std::io::stderr().is_terminal(),
            label,
            total,
        }
    }
    /// Says what the run is doing before its timed part (on a terminal).
    fn stage(&self, what: &str) {
        if self.on {
            eprintln!("{:>9}: {what}", self.label);
        }
    }
    fn tick(&self, done: usize) {
        if self.on {
            let width = 30;
            let filled = done * width / self.total.max(1);
            eprint!(
                "\r{:>9} [{}{}] {done}/{}",
                self.label,
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.total
            );
            if done == self.total {
                eprintln!();
            }
        }
    }
}

/// Times `batches` runs of the image graph on batches of `batch` copies of `frame` (after one
/// untimed warmup run); `tick(i)` is called after run `i` (1-based).
pub fn time_inference(
    det: &mut Detector,
    frame: &Rgb,
    batches: usize,
    batch: usize,
    tick: &dyn Fn(usize),
) -> anyhow::Result<Vec<Duration>> {
    let mut px = Vec::new();
    for _ in 0..batch {
        det.preprocess_into(frame, &mut px);
    }
    det.run_images(&px, batch).context("warmup inference")?;
    let mut lat = Vec::with_capacity(batches);
    for i in 0..batches {
        let t = Instant::now();
        det.run_images(&px, batch).context("inference")?;
        lat.push(t.elapsed());
        tick(i + 1);
    }
    Ok(lat)
}

/// Median of durations in milliseconds.
pub fn median_ms(v: &[Duration]) -> f64 {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2)
        .map(|d| d.as_secs_f64() * 1e3)
        .unwrap_or(f64::NAN)
}

/// The provider `--backend` selects on this machine, and the tiers skipped on the way.
fn select_provider(
    args: &BenchArgs,
) -> anyhow::Result<(crate::backend::Provider, Vec<crate::engine::Fallback>)> {
    let cfg = crate::config::Config {
        optimization_backend: args.backend,
        onnxruntime_path: args.runtime.detector_options().library,
        openvino_path: args.runtime.detector_options().openvino_library,
        openvino_precision: args.openvino_precision,
        max_batch_size: args.batch_size.max(1),
        // No cache: bench measures engines built in memory.
        enable_optimization: false,
        ..crate::config::Config::default()
    };
    let (provider, fallbacks) = crate::engine::first_available(&cfg.engine(), Some(&args.model));
    if args.precision == Precision::Int8 && provider != crate::backend::Provider::Cpu {
        anyhow::bail!(
            "--precision int8 is a CPU mode; {} was selected (use --backend cpu)",
            provider.name()
        );
    }
    Ok((provider, fallbacks))
}

fn measure_side(
    args: &BenchArgs,
    provider: &crate::backend::Provider,
    optimize: bool,
    frame: &Rgb,
) -> anyhow::Result<(SideResult, Detector)> {
    let profile = match (&args.profile, optimize) {
        (Some(dir), true) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            Some(dir.join("image"))
        }
        _ => None,
    };
    let opts = DetectorOptions {
        provider: provider.clone(),
        optimize,
        precision: args.precision,
        attention: args.attention,
        profile,
        ..args.runtime.detector_options()
    };
    let b = args.batch_size.max(1);
    let batches = args.num_images.max(1).div_ceil(b);
    let label = if optimize { "optimized" } else { "eager" };
    let bar = Progress::new(label, batches, args.json);
    bar.stage(if optimize {
        "loading the model and building the optimized engine"
    } else {
        "loading the model without graph optimizations"
    });
    let t = Instant::now();
    let mut det = load_detector(&args.model, &opts)
        .with_context(|| format!("cannot load model {}", args.model.display()))?;
    let load_s = t.elapsed().as_secs_f64();
    let start = Instant::now();
    let lat = time_inference(&mut det, frame, batches, b, &|i| bar.tick(i))?;
    let total = start.elapsed().as_secs_f64();
    Ok((
        SideResult {
            mode: label,
            load_s,
            images: batches * b,
            batch_size: b,
            images_per_s: (batches * b) as f64 / total,
            batch_latency: summarize(lat),
        },
        det,
    ))
}

/// The frame to measure: the decoded `--image` (with its bytes, to time decoding too), or a
/// synthetic 1920×1080 frame.
fn bench_frame(args: &BenchArgs) -> anyhow::Result<(Rgb, String, Option<Vec<u8>>)> {
    Ok(match &args.image {
        Some(p) => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let img = preprocess::decode(&bytes, &ImageLimits::default())
                .with_context(|| p.display().to_string())?;
            (img, p.display().to_string(), Some(bytes))
        }
        None => (
            synthetic_frame(1920, 1080),
            "synthetic 1920x1080".to_string(),
            None,
        ),
    })
}

/// Decode + preprocess and preprocess-only times (20 runs each).
fn measure_preprocess(
    det: &Detector,
    frame: &Rgb,
    bytes: Option<&[u8]>,
) -> anyhow::Result<(Latency, Latency)> {
    let n = 20;
    let mut both = Vec::with_capacity(n);
    let mut pre_only = Vec::with_capacity(n);
    let mut px = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let img = match bytes {
            Some(b) => preprocess::decode(b, &ImageLimits::default())?,
            None => frame.clone(),
        };
        let t1 = Instant::now();
        px.clear();
        det.preprocess_into(&img, &mut px);
        let end = Instant::now();
        both.push(end - t);
        pre_only.push(end - t1);
    }
    Ok((summarize(both), summarize(pre_only)))
}

/// Drift of the int8 engine `det` against the exact fp32 engine built beside it.
/// Drift of `det` (a non-fp32 engine) against the exact fp32 engine, patch by patch.
fn drift_vs_fp32(args: &BenchArgs, mut det: Detector, frame: &Rgb) -> anyhow::Result<Drift> {
    let ours = patch_outputs(&mut det, frame)?;
    drop(det);
    let mut exact = load_detector(&args.model, &args.runtime.detector_options())?;
    let reference = patch_outputs(&mut exact, frame)?;
    Ok(drift(
        &reference,
        &ours,
        f64::from(frame.width.max(frame.height)),
    ))
}

/// Runs the benchmark.
pub fn run(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let (frame, name, bytes) = bench_frame(args)?;
    let (cpu_model, cpu_flags) =
        crate::cpu::describe(&std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default());
    let (provider, fallbacks) = select_provider(args)?;
    if args.profile.is_some() && provider != crate::backend::Provider::Cpu {
        anyhow::bail!(
            "--profile times CPU kernels; with {} they would be launch times (use --backend cpu)",
            provider.name()
        );
    }
    for f in &fallbacks {
        tracing::warn!(backend = %f.backend, reason = %f.reason, "backend unavailable; falling back");
    }
    let (optimized, mut det) = measure_side(args, &provider, true, &frame)?;
    let profile = match det.end_profiling()? {
        Some(file) => {
            let json = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read the profile {}", file.display()))?;
            let summary = super::ort_profile::summarize(&json, &file.display().to_string())
                .map_err(anyhow::Error::msg)?;
            Some(summary)
        }
        None => None,
    };
    let (decode_and_preprocess, preprocess_only) =
        measure_preprocess(&det, &frame, bytes.as_deref())?;
    let backend = det.backend_name().to_string();
    let image_size = det.config.image_size;
    // OpenVINO's precision is its provider's; ONNX Runtime's is --precision.
    let precision = match &provider {
        crate::backend::Provider::OpenVino { precision, .. } => *precision,
        _ => args.precision,
    };
    let drift = if precision == Precision::Fp32 {
        drop(det);
        None
    } else {
        Some(drift_vs_fp32(args, det, &frame)?)
    };
    let (int8_drift, bf16_drift) = match precision {
        Precision::Int8 => (drift, None),
        Precision::Bf16 => (None, drift),
        _ => (None, None),
    };
    let eager = match (&provider, args.compare) {
        (_, false) => None,
        // OpenVINO has no eager mode: it is compared with ONNX Runtime's optimized CPU engine.
        (crate::backend::Provider::OpenVino { .. }, true) => {
            let mut side = measure_side(args, &crate::backend::Provider::Cpu, true, &frame)?.0;
            side.mode = "onnxruntime_cpu";
            Some(side)
        }
        (_, true) => Some(measure_side(args, &provider, false, &frame)?.0),
    };
    let speedup = eager
        .as_ref()
        .map(|e| e.batch_latency.p50_ms / optimized.batch_latency.p50_ms);
    let tracking = tracking_cost(&optimized);
    let rules = rules_cost(&optimized);
    let mut report = BenchReport {
        model: args.model.display().to_string(),
        backend,
        precision,
        fallbacks,
        image_size,
        threads: if args.runtime.threads == 0 {
            rayon::current_num_threads()
        } else {
            args.runtime.threads
        },
        preprocess_image: name,
        decode_and_preprocess,
        preprocess_only,
        optimized,
        eager,
        speedup,
        peak_rss_mb: peak_rss_mb(),
        int8_drift,
        bf16_drift,
        cpu_model,
        cpu_flags,
        profile,
        tracking,
        rules,
        summary: String::new(),
    };
    report.summary = summary_line(&report);
    Ok(report)
}

/// The widest SIMD level among this CPU's flags, for the summary.
fn simd_level(flags: &[&str]) -> &'static str {
    let has = |f: &str| flags.contains(&f);
    if has("amx_tile") {
        "AMX"
    } else if has("avx512f") {
        "AVX-512"
    } else if has("avx2") {
        "AVX2"
    } else if has("sve") {
        "SVE"
    } else if has("asimd") {
        "NEON"
    } else {
        "no wide SIMD"
    }
}

/// One line with what was run, where, and the headline numbers.
pub fn summary_line(r: &BenchReport) -> String {
    let model = std::path::Path::new(&r.model)
        .file_name()
        .map_or_else(|| r.model.clone(), |n| n.to_string_lossy().to_string());
    let o = &r.optimized;
    let mut s = format!(
        "intelligent-video {} bench: {model} {}x{} on {} {}, {} threads, {} ({}): {:.3} images/s, p50 {:.1} ms per batch of {}",
        env!("CARGO_PKG_VERSION"),
        r.image_size,
        r.image_size,
        r.backend,
        r.precision.name(),
        r.threads,
        r.cpu_model.as_deref().unwrap_or("unknown CPU"),
        simd_level(&r.cpu_flags),
        o.images_per_s,
        o.batch_latency.p50_ms,
        o.batch_size,
    );
    if let Some(x) = r.speedup {
        s.push_str(&format!(", {x:.2}x faster than {}", baseline_name(r)));
    }
    if let Some(m) = r.peak_rss_mb {
        s.push_str(&format!(", peak RSS {m:.0} MiB"));
    }
    s
}

/// What `--compare` measured against: the eager baseline, or ONNX Runtime's CPU engine (OpenVINO).
fn baseline_name(r: &BenchReport) -> &'static str {
    match r.eager.as_ref().map(|e| e.mode) {
        Some("onnxruntime_cpu") => "ONNX Runtime's CPU engine",
        _ => "eager",
    }
}

/// Human-readable report.
pub fn render_text(r: &BenchReport) -> String {
    let mut s = format!(
        "model {} ({}x{}), backend {}, {} threads\npreprocess ({}): decode+preprocess p50 {:.2} ms, preprocess only p50 {:.2} ms\n",
        r.model, r.image_size, r.image_size, r.backend, r.threads, r.preprocess_image, r.decode_and_preprocess.p50_ms, r.preprocess_only.p50_ms
    );
    s.push_str(&format!(
        "cpu {} ({})\n",
        r.cpu_model.as_deref().unwrap_or("unknown"),
        r.cpu_flags.join(" ")
    ));
    for f in &r.fallbacks {
        s.push_str(&format!("skipped {}: {}\n", f.backend, f.reason));
    }
    for side in std::iter::once(&r.optimized).chain(r.eager.iter()) {
        s.push_str(&format!(
            "{:>9}: {:.3} images/s, batch {} latency p50 {:.1} ms p95 {:.1} ms (load {:.2} s)\n",
            side.mode,
            side.images_per_s,
            side.batch_size,
            side.batch_latency.p50_ms,
            side.batch_latency.p95_ms,
            side.load_s
        ));
    }
    if let Some(x) = r.speedup {
        let base = r.eager.as_ref().map_or("eager", |e| e.mode);
        s.push_str(&format!("speedup ({base} p50 / optimized p50): {x:.2}x\n"));
    }
    for (name, d) in [("int8", &r.int8_drift), ("bf16", &r.bf16_drift)] {
        let Some(d) = d else { continue };
        s.push_str(&format!(
            "{name} drift vs fp32 over {} patches: score max {:.4} mean {:.4}; box max {:.4} mean {:.4} x max(H,W); same label {:.1}%\n",
            d.patches, d.max_score, d.mean_score, d.max_box_rel, d.mean_box_rel, d.same_label * 100.0
        ));
    }
    if let Some(m) = r.peak_rss_mb {
        s.push_str(&format!("peak RSS {m:.0} MiB\n"));
    }
    let t = &r.tracking;
    s.push_str(&format!(
        "tracking: {:.1} us per frame of {} objects ({:.3}% of an image's inference)\n",
        t.update_us,
        t.objects,
        t.share_of_frame * 100.0
    ));
    let c = &r.rules;
    s.push_str(&format!(
        "rules: {:.1} us per frame of {} objects through {} zones and {} lines, {:.2} events a frame serialised and made MQTT messages ({:.3}% of an image's inference)\n",
        c.frame_us,
        c.objects,
        c.zones,
        c.lines,
        c.events_per_frame,
        c.share_of_frame * 100.0
    ));
    if let Some(p) = &r.profile {
        s.push_str(&super::ort_profile::render(p, 15));
    }
    s.push_str(&format!("summary: {}\n", r.summary));
    s
}
