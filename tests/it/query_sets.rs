//! Saved query sets (`/v1/query-sets`): checked when saved, used by `/v1/detect` with the same
//! answer as the inline queries (and only cache hits for the exemplars), kept across a restart,
//! limited, deleted; clear errors throughout.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::support::daemon::{Daemon, Response};
use crate::support::fixtures;

fn b64(name: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(fixtures::image(name))
}

fn put(d: &Daemon, name: &str, body: &Value) -> Response {
    d.request(
        "PUT",
        &format!("/v1/query-sets/{name}"),
        Some("application/json"),
        body.to_string().as_bytes(),
    )
}

fn metric(text: &str, name: &str) -> f64 {
    crate::support::metrics::value(text, name, &[]).unwrap_or(0.0)
}

/// A set with a text query, two exemplars averaged under one label and a negative.
fn parts() -> Value {
    json!({
        "queries": ["a photo of a cat"],
        "query_images": [
            {"image_base64": b64("wide_blur.png"), "label": "blur"},
            {"image_base64": b64("exact_a.png"), "box": [10, 10, 30, 40], "label": "blur"},
            {"image_base64": b64("small_pad.png"), "negative": true},
        ],
    })
}

/// `(label, query_index, score, box)` of each detection.
fn detections(r: &Response) -> Vec<(String, u64, f64, Vec<f64>)> {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["detections"]
        .as_array()
        .expect("detections")
        .iter()
        .map(|d| {
            (
                d["label"].as_str().unwrap_or("").to_string(),
                d["query_index"].as_u64().unwrap_or(99),
                d["score"].as_f64().unwrap_or(-1.0),
                d["box"]
                    .as_array()
                    .map(|b| b.iter().filter_map(Value::as_f64).collect())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn detect_with_set(d: &Daemon, name: &str) -> Response {
    d.request(
        "POST",
        &format!("/v1/detect?query_set={name}&threshold=0"),
        Some("image/jpeg"),
        &fixtures::image("photo.jpg"),
    )
}

#[test]
fn query_sets_are_checked_used_kept_and_deleted() {
    let tmp = tempfile::tempdir().expect("tmp");
    let state = tmp.path().join("state");
    let state_s = state.to_str().expect("utf8").to_string();
    let start = || {
        let mut d = Daemon::launch(
            fixtures::model_dir("tiny-a").to_str().expect("utf8"),
            &[],
            &[("IV_STATE_DIR", &state_s), ("IV_MAX_QUERY_SETS", "2")],
        );
        d.wait_ready();
        d
    };
    let mut d = start();

    let r = put(&d, "parts", &parts());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let s = r.json();
    assert_eq!(s["name"], "parts");
    assert_eq!(s["queries"], json!(["a photo of a cat"]));
    let images = s["query_images"].as_array().expect("images");
    assert_eq!(images.len(), 3);
    assert_eq!(images[1]["box"], json!([10.0, 10.0, 30.0, 40.0]));
    assert_eq!(images[2]["negative"], true);
    assert_eq!(images[0]["sha256"].as_str().map(str::len), Some(64), "{s}");
    assert!(
        images[0].get("image_base64").is_none(),
        "no image bytes in listings"
    );

    // The set gives the inline request's detections; the inline one then hits the cache for all
    // four queries.
    let via_set = detections(&detect_with_set(&d, "parts"));
    assert!(!via_set.is_empty());
    assert!(
        via_set.iter().any(|x| x.0 == "blur" && x.1 == 1),
        "{via_set:?}"
    );
    assert!(
        via_set.iter().all(|x| x.0 != "image:0" && x.0 != "image:2"),
        "{via_set:?}"
    );
    let before = d.metrics();
    let mut inline = parts();
    inline["image_base64"] = json!(b64("photo.jpg"));
    let r = d.request(
        "POST",
        "/v1/detect?threshold=0",
        Some("application/json"),
        inline.to_string().as_bytes(),
    );
    assert_eq!(detections(&r), via_set);
    let after = d.metrics();
    let delta = |m: &str| metric(&after, m) - metric(&before, m);
    assert_eq!(
        (
            delta("iv_query_cache_hits_total"),
            delta("iv_query_cache_misses_total")
        ),
        (4.0, 0.0)
    );
    // The negative counts: without it, more patches are reported, and those it kept are unchanged.
    let mut without = parts();
    without["image_base64"] = json!(b64("photo.jpg"));
    without["query_images"]
        .as_array_mut()
        .expect("images")
        .pop();
    let r = d.request(
        "POST",
        "/v1/detect?threshold=0",
        Some("application/json"),
        without.to_string().as_bytes(),
    );
    let all = detections(&r);
    assert!(
        all.len() > via_set.len(),
        "{} vs {}",
        all.len(),
        via_set.len()
    );
    assert!(via_set.iter().all(|x| all.contains(x)));
    // The request's own unlabelled exemplar is numbered after the set's three.
    let r = d.request(
        "POST",
        "/v1/detect?threshold=0",
        Some("application/json"),
        json!({"image_base64": b64("photo.jpg"), "query_set": "parts",
               "query_images": [{"image_base64": b64("gray.png")}]})
        .to_string()
        .as_bytes(),
    );
    let labels: std::collections::BTreeSet<String> =
        detections(&r).into_iter().map(|x| x.0).collect();
    assert!(labels.contains("image:3"), "{labels:?}");
    assert!(
        labels.is_subset(
            &["a photo of a cat", "blur", "image:3"]
                .map(String::from)
                .into()
        ),
        "{labels:?}"
    );
    // A text query cannot pose as an exemplar's cache key (no control characters in queries).
    let r = d.request(
        "POST",
        "/v1/detect",
        Some("application/json"),
        json!({"image_base64": b64("photo.jpg"), "queries": [format!("\u{0}image:{}", images[0]["sha256"].as_str().unwrap_or(""))]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!((r.status, r.kind()), (400, "invalid_query".to_string()));
    // A set in a JSON request, with a text query of the request's own after the set's.
    let r = d.request(
        "POST",
        "/v1/detect?threshold=0",
        Some("application/json"),
        json!({"image_base64": b64("photo.jpg"), "query_set": "parts", "queries": ["a dog"]})
            .to_string()
            .as_bytes(),
    );
    let with_dog = detections(&r);
    assert!(
        with_dog.iter().all(|x| match x.0.as_str() {
            "a photo of a cat" => x.1 == 0,
            "a dog" => x.1 == 1,
            "blur" => x.1 == 2,
            _ => false,
        }),
        "{with_dog:?}"
    );

    // Refusals.
    let not_an_image = base64::engine::general_purpose::STANDARD.encode(b"not an image");
    let cases: Vec<(&str, Value, u16, &str, &str)> = vec![
        (
            "Bad_Name",
            parts(),
            400,
            "invalid_name",
            "invalid query set name",
        ),
        (
            "e",
            json!({}),
            400,
            "invalid_parameter",
            "needs queries or query_images",
        ),
        (
            "e",
            json!({"queries": ["x"], "colour": 1}),
            400,
            "invalid_json",
            "unknown field",
        ),
        (
            "e",
            json!({"query_images": [{"image_base64": not_an_image}]}),
            400,
            "invalid_parameter",
            "query_images[0]",
        ),
        (
            "e",
            json!({"query_images": [{"image_base64": b64("small_pad.png"), "box": [0, 0, 60, 10]}]}),
            400,
            "invalid_parameter",
            "outside the 50x30 image",
        ),
        (
            "e",
            json!({"queries": ["x"], "query_images": [{"image_base64": b64("small_pad.png"), "negative": true, "label": "y"}]}),
            400,
            "invalid_parameter",
            "names no query",
        ),
    ];
    for (name, body, status, kind, text) in cases {
        let r = put(&d, name, &body);
        assert_eq!(
            (r.status, r.kind()),
            (status, kind.to_string()),
            "{name} {body}"
        );
        let j = r.json();
        let msg = j["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains(text), "{text:?} not in {msg:?}");
    }
    assert_eq!(put(&d, "other", &json!({"queries": ["a dog"]})).status, 201);
    let r = put(&d, "third", &json!({"queries": ["a dog"]}));
    assert_eq!(
        (r.status, r.kind()),
        (409, "too_many_query_sets".to_string())
    );
    assert_eq!(
        put(&d, "other", &json!({"queries": ["a cat"]})).status,
        200,
        "replacing"
    );
    let r = detect_with_set(&d, "nope");
    assert_eq!((r.status, r.kind()), (400, "unknown_query_set".to_string()));
    assert_eq!(
        d.request("GET", "/v1/query-sets/nope", None, b"").status,
        404
    );
    assert_eq!(
        d.request("POST", "/v1/query-sets/parts", None, b"").status,
        405
    );
    let listed = d.request("GET", "/v1/query-sets", None, b"").json();
    let names: Vec<&str> = listed["query_sets"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec!["other", "parts"]);

    // Kept across a restart, with the same answer.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(d.wait_exit(Duration::from_secs(30)), Some(0));
    let d = start();
    assert_eq!(detections(&detect_with_set(&d, "parts")), via_set);
    assert_eq!(
        d.request("DELETE", "/v1/query-sets/parts", None, b"")
            .status,
        204
    );
    assert_eq!(
        d.request("DELETE", "/v1/query-sets/parts", None, b"")
            .status,
        404
    );
    let r = detect_with_set(&d, "parts");
    assert_eq!((r.status, r.kind()), (400, "unknown_query_set".to_string()));
    let saved = std::fs::read_to_string(state.join("query-sets.json")).expect("state file");
    assert!(
        saved.contains("\"other\"") && !saved.contains("\"parts\""),
        "{saved}"
    );
}
