//! The health listener's endpoints, which only read shared state (probes never wait behind
//! inference): `/livez`, `/readyz`, `/api/health`, `/api/optimization`, `/metrics`.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::json;

use super::body::Body;
use super::request::{json_response, Resp};
use super::state::{AppState, Phase};

/// `/livez`: the process answers.
pub(super) fn livez() -> Resp {
    json_response(200, json!({"status": "alive"}).to_string())
}

/// `/readyz`: 200 once ready, else 503.
pub(super) fn readyz(st: &AppState) -> Resp {
    let ready = st.phase() == Phase::Ready;
    json_response(
        if ready { 200 } else { 503 },
        json!({"ready": ready}).to_string(),
    )
}

/// `/metrics`: the service's and the streams' Prometheus text.
pub(super) fn metrics(st: &AppState) -> Resp {
    let depth = st.queue_depth() as u64;
    let mut text = st.metrics.render(depth, st.cache_stats());
    if let Some(m) = st.streams.get() {
        m.render_metrics(&mut text);
    }
    if let Some(e) = st.events.get() {
        e.render_metrics(&mut text);
    }
    let mut r = Response::new(Body::full(text));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

fn phase_name(p: Phase) -> &'static str {
    match p {
        Phase::Starting => "starting",
        Phase::Ready => "healthy",
        Phase::Stopping => "stopping",
        Phase::Failed => "failed",
    }
}

pub(super) fn health(st: &AppState) -> Resp {
    let p = st.phase();
    let e = st.engine();
    let body = json!({
        "status": phase_name(p),
        "model_loaded": st.service.get().is_some(),
        "gpu_available": e.gpu_available,
        "optimization": {
            "backend": e.backend,
            "speedup_estimate": e.speedup_estimate,
            "cached": e.cached,
        },
        "status_line": st.status_line.lock().map(|s| s.clone()).unwrap_or_default(),
        "streams": st.streams.get().map(|m| m.summary()).unwrap_or_default(),
    });
    json_response(if p == Phase::Ready { 200 } else { 503 }, body.to_string())
}

pub(super) fn optimization(st: &AppState) -> Resp {
    let e = st.engine();
    let c = &st.config;
    let engine = c.engine();
    let (cuda_graphs, exhaustive_conv) = (engine.cuda_graphs, engine.exhaustive_conv);
    let body = json!({
        "model_name": e.model_name,
        "model_dir": e.model_dir,
        "device": e.device,
        "gpu_available": e.gpu_available,
        "optimization": {
            "backend": e.backend,
            "optimization_time": e.optimization_time,
            "speedup_estimate": e.speedup_estimate,
            "cached": e.cached,
            "fallbacks": e.fallbacks,
        },
        "settings": {
            "enable_optimization": c.enable_optimization,
            "backend_preference": c.optimization_backend,
            "tensorrt_precision": c.tensorrt_precision,
            // The Python service's key, kept for its users; what it turns on here follows.
            "torch_compile_mode": c.torch_compile_mode,
            "cuda_graphs": cuda_graphs,
            "cudnn_exhaustive_search": exhaustive_conv,
        },
        "onnxruntime_version": e.onnxruntime_version,
        "onnxruntime_path": e.onnxruntime_path,
        "cuda_libraries": e.cuda_libraries,
        "openvino": e.openvino,
        "gpu": e.gpu,
        "image_size": e.image_size,
        "warmup_ms": e.warmup_ms,
        "status": phase_name(st.phase()),
    });
    json_response(200, body.to_string())
}
