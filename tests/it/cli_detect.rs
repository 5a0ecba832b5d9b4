//! The `detect` command through the real binary: output format, agreement with the library
//! pipeline, and bad input (each a one-line error and a non-zero exit, never a panic).

use std::path::Path;
use std::process::Output;

use intelligent_video::engine::{load_detector, DetectorOptions};
use intelligent_video::model::tokenizer::QueryRules;
use intelligent_video::postprocess::PostParams;
use intelligent_video::preprocess::{self, ImageLimits};

use crate::support::bin;
use crate::support::detections::{compare, Det, Tolerance};
use crate::support::fixtures::{self, image_path, model_dir};

/// CLI vs library: the same engine on the same pixels, one image per run, so only the JSON round
/// trip of the f32 numbers separates them. The bound is tighter than the README's parity
/// tolerances on purpose (score < 1e-6, box < 1e-3 px) and kept as it was.
const CLI_VS_LIBRARY: Tolerance = Tolerance::strict(1e-6, 1e-3);

fn detect(model: &Path, extra: &[&str], images: &[&Path]) -> Output {
    let mut c = bin::command();
    c.arg("detect").arg("--model").arg(model);
    c.args(extra);
    c.args(images);
    c.output().expect("binary runs")
}

fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "expected failure, stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "panic: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {stderr}");
    assert!(
        errors[0].to_lowercase().contains(&needle.to_lowercase()),
        "{needle:?} not in {:?}",
        errors[0]
    );
}

#[test]
fn prints_one_json_line_per_image_matching_the_library() {
    let model = model_dir("tiny-a");
    let images = [image_path("wide_blur.png"), image_path("photo.jpg")];
    let refs: Vec<&Path> = images.iter().map(|p| p.as_path()).collect();
    let out = detect(
        &model,
        &[
            "--query",
            "a photo of a cat",
            "--query",
            "a dog",
            "--threshold",
            "0.2",
        ],
        &refs,
    );
    bin::assert_success(&out);
    let stdout = String::from_utf8(out.stdout).expect("utf8");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2);
    let mut det = load_detector(&model, &DetectorOptions::default()).expect("load");
    let qs = vec!["a photo of a cat".to_string(), "a dog".to_string()];
    for (line, path) in lines.iter().zip(&images) {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let obj = v.as_object().expect("object");
        let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(keys, vec!["detections", "height", "image", "width"]);
        assert_eq!(v["image"], path.display().to_string());
        let rgb = preprocess::decode(&std::fs::read(path).expect("read"), &ImageLimits::default())
            .expect("decode");
        assert_eq!(v["width"], rgb.width);
        assert_eq!(v["height"], rgb.height);
        let want = det
            .detect(
                &[&rgb],
                &qs,
                &QueryRules::default(),
                &PostParams {
                    threshold: 0.2,
                    nms_iou: None,
                },
            )
            .expect("detect")
            .remove(0);
        let got = v["detections"].as_array().expect("detections");
        assert_eq!(got.len(), want.len());
        assert!(
            !got.is_empty(),
            "threshold 0.2 should keep some detections on the fixture"
        );
        for g in got {
            let mut keys: Vec<&str> = g
                .as_object()
                .expect("obj")
                .keys()
                .map(|k| k.as_str())
                .collect();
            keys.sort_unstable();
            assert_eq!(keys, vec!["box", "label", "query_index", "score"]);
            assert!(g["score"].as_f64().expect("score") > 0.2);
        }
        let got_d = Det::list_from_json(&v["detections"]).expect("detections");
        let want_d: Vec<Det> = want.iter().map(Det::from_lib).collect();
        let side = rgb.width.max(rgb.height) as f64;
        compare(&got_d, &want_d, side, CLI_VS_LIBRARY)
            .unwrap_or_else(|e| panic!("{}: CLI vs library: {e}", path.display()));
        let scores: Vec<f64> = got
            .iter()
            .map(|g| g["score"].as_f64().expect("s"))
            .collect();
        assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted by score");
    }
}

#[test]
fn nms_removes_overlapping_boxes_of_the_same_query() {
    let model = model_dir("tiny-a");
    let img = image_path("wide_blur.png");
    let run = |extra: &[&str]| -> Vec<serde_json::Value> {
        let mut args = vec!["--query", "person", "--threshold", "0.0"];
        args.extend_from_slice(extra);
        let out = detect(&model, &args, &[img.as_path()]);
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        v["detections"].as_array().expect("arr").clone()
    };
    let all = run(&[]);
    let kept = run(&["--nms", "0.3"]);
    assert!(
        kept.len() < all.len(),
        "nms kept {} of {}",
        kept.len(),
        all.len()
    );
    assert_eq!(kept[0], all[0], "the best box always survives");
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write");
    p
}

#[test]
fn bad_images_fail_cleanly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let model = model_dir("tiny-a");
    let png = fixtures::image("wide_blur.png");
    // 30000x30000 RGB PNG header: a decompression bomb refused before decoding.
    let mut bomb = png[..16].to_vec();
    bomb.extend_from_slice(&30000u32.to_be_bytes());
    bomb.extend_from_slice(&30000u32.to_be_bytes());
    bomb.extend_from_slice(&png[24..]);
    let cases: Vec<(std::path::PathBuf, &str)> = vec![
        (write(tmp.path(), "empty.png", b""), "empty"),
        (
            write(tmp.path(), "truncated.png", &png[..png.len() / 2]),
            "cannot be decoded",
        ),
        (
            write(tmp.path(), "notes.txt", b"just some text, not an image\n"),
            "not recognised",
        ),
        (write(tmp.path(), "bomb.png", &bomb), "30000x30000"),
        (tmp.path().join("missing.png"), "cannot read"),
    ];
    for (path, needle) in &cases {
        let out = detect(&model, &["--query", "a cat"], &[path.as_path()]);
        assert_clean_failure(&out, needle);
        assert!(out.stdout.is_empty());
    }
    // A bad image among good ones: the good ones are still printed, the exit is non-zero.
    let good = image_path("small_pad.png");
    let out = detect(
        &model,
        &["--query", "a cat"],
        &[good.as_path(), cases[0].0.as_path()],
    );
    assert!(!out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn bad_models_and_arguments_fail_cleanly() {
    let tmp = tempfile::tempdir().expect("tmp");
    let img = image_path("small_pad.png");
    let out = detect(
        &tmp.path().join("nope"),
        &["--query", "a cat"],
        &[img.as_path()],
    );
    assert_clean_failure(&out, "missing model file");

    // A checkpoint whose class_head.dense0.weight has its dimensions swapped.
    let bad = tmp.path().join("bad");
    std::fs::create_dir(&bad).expect("mkdir");
    let src = model_dir("tiny-a");
    for entry in std::fs::read_dir(&src).expect("ls") {
        let p = entry.expect("entry").path();
        std::fs::copy(&p, bad.join(p.file_name().expect("name"))).expect("copy");
    }
    let st = std::fs::read(bad.join("model.safetensors")).expect("read");
    let n = u64::from_le_bytes(st[..8].try_into().expect("8")) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).expect("header");
    let shape = header["class_head.dense0.weight"]["shape"]
        .as_array()
        .expect("shape")
        .clone();
    let swapped = serde_json::json!([shape[1], shape[0]]);
    assert_ne!(
        swapped,
        serde_json::Value::Array(shape.clone()),
        "fixture must be non-square"
    );
    header["class_head.dense0.weight"]["shape"] = swapped;
    let mut hb = serde_json::to_vec(&header).expect("ser");
    while hb.len() < n {
        hb.push(b' ');
    }
    assert_eq!(hb.len(), n, "header must keep its length");
    let mut out_bytes = st[..8].to_vec();
    out_bytes.extend_from_slice(&hb);
    out_bytes.extend_from_slice(&st[8 + n..]);
    std::fs::write(bad.join("model.safetensors"), out_bytes).expect("write");
    let out = detect(&bad, &["--query", "a cat"], &[img.as_path()]);
    assert_clean_failure(&out, "class_head.dense0.weight");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("[{}, {}]", shape[1], shape[0]))
            && stderr.contains(&format!("[{}, {}]", shape[0], shape[1])),
        "both shapes named: {stderr}"
    );

    let model = model_dir("tiny-a");
    let out = detect(&model, &["--query", "   "], &[img.as_path()]);
    assert_clean_failure(&out, "empty");
    let out = detect(
        &model,
        &["--query", "a cat", "--threshold", "1.5"],
        &[img.as_path()],
    );
    assert_clean_failure(&out, "threshold");
    // Missing --query is a usage error from the argument parser.
    let out = bin::command()
        .args(["detect", "--model"])
        .arg(&model)
        .arg(&img)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

/// `--query-image`: an exemplar (and an exemplar box) mixed with a text query; the exemplar's
/// best score is transformers' (sigmoid of the best image-guided logit, goldens of
/// `generate_guided.py`); labels default to `image:<n>`; bad exemplars fail cleanly.
#[test]
fn query_images_mix_with_text_and_match_transformers() {
    let model = model_dir("tiny-a");
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures::fixtures().join("golden/tiny-a-guided.json"))
            .expect("golden"),
    )
    .expect("json");
    let case = &g["cases"][0]; // wide_blur.png (no box) -> small_pad.png
    assert_eq!(case["exemplar"], "wide_blur.png");
    let best_logit = case["logits"]
        .as_array()
        .expect("logits")
        .iter()
        .map(|v| v.as_f64().expect("n"))
        .fold(f64::NEG_INFINITY, f64::max);
    let want = 1.0 / (1.0 + (-best_logit).exp());
    let ex = image_path("wide_blur.png");
    let boxed = format!("{}#10,10,30,40", image_path("exact_a.png").display());
    let out = detect(
        &model,
        &[
            "--query",
            "a photo of a cat",
            "--query-image",
            ex.to_str().expect("utf8"),
            "--query-image",
            &boxed,
            "--label",
            "blur",
            "--threshold",
            "0",
        ],
        &[&image_path("small_pad.png")],
    );
    bin::assert_success(&out);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let dets = line["detections"].as_array().expect("detections");
    let labels: std::collections::BTreeSet<&str> =
        dets.iter().filter_map(|d| d["label"].as_str()).collect();
    assert!(
        labels.is_subset(&["a photo of a cat", "blur", "image:1"].into()),
        "{labels:?}"
    );
    // The exemplar alone on the same image, to isolate its own best score.
    let alone = detect(
        &model,
        &[
            "--query-image",
            ex.to_str().expect("utf8"),
            "--threshold",
            "0",
        ],
        &[&image_path("small_pad.png")],
    );
    bin::assert_success(&alone);
    let alone: serde_json::Value = serde_json::from_slice(&alone.stdout).expect("json");
    let top = &alone["detections"][0];
    assert_eq!(top["label"], "image:0");
    let got = top["score"].as_f64().expect("score");
    assert!(
        (got - want).abs() < 1e-4,
        "exemplar best score {got}, transformers {want}"
    );

    let bad = format!("{}#0,0,500,10", image_path("small_pad.png").display());
    let out = detect(
        &model,
        &["--query-image", &bad],
        &[&image_path("small_pad.png")],
    );
    assert_clean_failure(&out, "outside the 50x30 image");
    let out = detect(
        &model,
        &["--query-image", "/nonexistent/x.png"],
        &[&image_path("small_pad.png")],
    );
    assert_clean_failure(&out, "cannot read /nonexistent/x.png");
    let out = detect(
        &model,
        &[
            "--query-image",
            ex.to_str().expect("utf8"),
            "--label",
            "a",
            "--label",
            "b",
        ],
        &[&image_path("small_pad.png")],
    );
    assert_clean_failure(&out, "2 --label for 1 --query-image");
}

/// `--query-image`s sharing a `--label` are one query; a `--negative-image` equal to the only
/// positive one vetoes every match; a `--label` that is also a `--query` is refused.
#[test]
fn same_label_query_images_average_and_negative_images_veto() {
    let model = model_dir("tiny-a");
    let a = image_path("wide_blur.png");
    let a = a.to_str().expect("utf8");
    let b = format!("{}#10,10,30,40", image_path("exact_a.png").display());
    let target = image_path("photo.jpg");
    let run = |args: &[&str]| {
        let out = detect(&model, args, &[&target]);
        bin::assert_success(&out);
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        line["detections"].as_array().expect("detections").clone()
    };
    let both = run(&[
        "--query-image",
        a,
        "--label",
        "x",
        "--query-image",
        &b,
        "--label",
        "x",
        "--threshold",
        "0",
    ]);
    assert!(!both.is_empty());
    assert!(
        both.iter()
            .all(|d| d["label"] == "x" && d["query_index"] == 0),
        "one query"
    );
    let only_a = run(&["--query-image", a, "--label", "x", "--threshold", "0"]);
    assert_ne!(both, only_a, "the average is not the first exemplar");
    let none = run(&[
        "--query-image",
        a,
        "--negative-image",
        a,
        "--threshold",
        "0",
    ]);
    assert!(none.is_empty(), "{none:?}");
    let out = detect(
        &model,
        &["--query", "x", "--query-image", a, "--label", "x"],
        &[&target],
    );
    assert_clean_failure(&out, "also a text query");
}

/// `--draw`: the image comes back at its size, changed only where the boxes' outlines and caption
/// bars are drawn (a 1-px-scale caption: 10 px high, 8 px a character + 2), and changed at every
/// box; a file name without a known image extension is refused before anything runs.
#[test]
fn draw_writes_the_image_changed_only_at_its_boxes() {
    let tmp = tempfile::tempdir().expect("tmp");
    let input = image_path("photo.jpg");
    let out_path = tmp.path().join("drawn.png");
    let out = detect(
        &model_dir("tiny-a"),
        &[
            "--query",
            "a photo of a cat",
            "--threshold",
            "0.9",
            "--draw",
            out_path.to_str().expect("utf8"),
        ],
        &[input.as_path()],
    );
    bin::assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let dets = v["detections"].as_array().expect("detections");
    assert!(!dets.is_empty(), "nothing to draw: {v}");
    let before = preprocess::decode(
        &std::fs::read(&input).expect("read"),
        &ImageLimits::default(),
    )
    .expect("decode input");
    let after = preprocess::decode(
        &std::fs::read(&out_path).expect("the drawing is written"),
        &ImageLimits::default(),
    )
    .expect("decode drawing");
    assert_eq!((after.width, after.height), (before.width, before.height));
    // Each box's region: the box, and its caption bar above it (or inside its top when no room).
    let regions: Vec<[i64; 4]> = dets
        .iter()
        .map(|d| {
            let b: Vec<f64> = (0..4).map(|k| d["box"][k].as_f64().expect("box")).collect();
            let caption = format!(
                "{} {:.2}",
                d["label"].as_str().expect("label"),
                d["score"].as_f64().expect("score")
            );
            let bar_w = caption.chars().count() as f64 * 8.0 + 2.0;
            [
                b[0].floor() as i64 - 1,
                b[1].floor() as i64 - 11,
                (b[2].max(b[0] + bar_w)).ceil() as i64 + 1,
                b[3].ceil() as i64 + 1,
            ]
        })
        .collect();
    let w = before.width as i64;
    let mut changed_in = vec![0usize; regions.len()];
    for (i, (a, b)) in before
        .data
        .chunks_exact(3)
        .zip(after.data.chunks_exact(3))
        .enumerate()
    {
        if a == b {
            continue;
        }
        let (x, y) = (i as i64 % w, i as i64 / w);
        let inside: Vec<usize> = (0..regions.len())
            .filter(|&k| {
                let r = regions[k];
                // A caption bar that would leave the image is pushed left to fit.
                let left = r[0].min(w - (r[2] - r[0]));
                x >= left && x < r[2] && y >= r[1].max(0) - 1 && y < r[3]
            })
            .collect();
        assert!(
            !inside.is_empty(),
            "pixel ({x}, {y}) changed outside every box: {regions:?}"
        );
        for k in inside {
            changed_in[k] += 1;
        }
    }
    assert!(
        changed_in.iter().all(|&n| n > 0),
        "a box drawn nowhere: {changed_in:?} {regions:?}"
    );

    let bad = detect(
        &model_dir("tiny-a"),
        &[
            "--query",
            "a cat",
            "--draw",
            tmp.path().join("drawn.gif").to_str().expect("utf8"),
        ],
        &[input.as_path()],
    );
    assert_clean_failure(&bad, "must end in .png, .jpg or .jpeg");
    assert!(!tmp.path().join("drawn.gif").exists());
}

/// Without `--model`, `detect` loads the configured model from the store (as `serve` does) and
/// says which; a configured model that is not installed is one error line naming `model pull`.
#[test]
fn without_model_the_configured_one_is_used_and_named() {
    let tmp = tempfile::tempdir().expect("tmp");
    let config = tmp.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "model = \"{}\"\nmodel_store = \"{}\"\n",
            model_dir("tiny-a").display(),
            tmp.path().display()
        ),
    )
    .expect("config");
    let image = image_path("photo.jpg");
    let run = |config: &Path| {
        let mut c = bin::command();
        c.args(["detect", "--query", "a photo of a cat", "--config"])
            .arg(config)
            .arg(&image);
        c.output().expect("binary runs")
    };
    let out = run(&config);
    bin::assert_success(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("using the configured model") && stderr.contains("tiny-a"),
        "{stderr}"
    );
    let with_model = detect(
        &model_dir("tiny-a"),
        &["--query", "a photo of a cat"],
        &[&image],
    );
    bin::assert_success(&with_model);
    assert_eq!(
        out.stdout, with_model.stdout,
        "the same model, the same answer"
    );

    std::fs::write(
        &config,
        format!(
            "model = \"org/absent\"\nmodel_store = \"{}\"\n",
            tmp.path().display()
        ),
    )
    .expect("config");
    assert_clean_failure(&run(&config), "model pull org/absent");
}
