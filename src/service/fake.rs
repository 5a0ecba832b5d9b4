//! A detection service on a fake backend (tiny-a's config and tokenizer, outputs of zeros: every
//! patch scores sigmoid(0) = 0.5), with a probe that gates and counts image batches: for the
//! in-process tests of the service and of the stream runs.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};

use super::*;
use crate::backend::{Backend, BackendError, ImageBatch};
use crate::model::{ModelDir, QueryTokenizer};

/// A gate the fake backend waits on before answering an image batch (open by default).
#[derive(Default)]
pub(crate) struct Gate {
    closed: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    pub(crate) fn set(&self, closed: bool) {
        if let Ok(mut c) = self.closed.lock() {
            *c = closed;
        }
        self.cv.notify_all();
    }
    fn wait(&self) {
        let Ok(mut c) = self.closed.lock() else {
            return;
        };
        while *c {
            c = match self.cv.wait(c) {
                Ok(c) => c,
                Err(_) => return,
            };
        }
    }
}

#[derive(Default)]
pub(crate) struct Probe {
    pub(crate) gate: Gate,
    /// Image batch sizes seen, in order.
    pub(crate) batches: Mutex<Vec<usize>>,
    pub(crate) fail: Mutex<bool>,
}

struct FakeBackend {
    patches: usize,
    dim: usize,
    probe: Arc<Probe>,
}

impl Backend for FakeBackend {
    fn name(&self) -> &str {
        "fake"
    }
    fn run_image(&mut self, _px: &[f32], batch: usize) -> Result<ImageBatch, BackendError> {
        if let Ok(mut b) = self.probe.batches.lock() {
            b.push(batch);
        }
        self.probe.gate.wait();
        if self.probe.fail.lock().map(|f| *f).unwrap_or(false) {
            return Err(BackendError::Run("injected failure".into()));
        }
        let (p, c) = (self.patches, self.dim);
        Ok(ImageBatch {
            batch,
            num_patches: p,
            class_dim: c,
            class_embeds: vec![0.0; batch * p * c],
            logit_shift: vec![0.0; batch * p],
            logit_scale: vec![1.0; batch * p],
            pred_boxes: vec![0.5; batch * p * 4],
            objectness_logits: vec![0.0; batch * p],
        })
    }
    fn run_text(&mut self, _ids: &[i64], n: usize) -> Result<Vec<f32>, BackendError> {
        Ok(vec![0.0; n * self.dim])
    }
}

fn tiny_a() -> ModelDir {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures/tiny-a");
    ModelDir::open(&dir).expect("tiny-a opens")
}

pub(crate) fn config() -> ServiceConfig {
    ServiceConfig::from_config(&Config::default())
}

/// A running service on the fake backend, with its probe.
pub(crate) fn start(cfg: ServiceConfig) -> (DetectService, Worker, Arc<Probe>, Arc<Metrics>) {
    let model = tiny_a();
    let tokenizer = QueryTokenizer::from_dir(&model.dir, model.config.text_len).expect("tokenizer");
    let probe = Arc::new(Probe::default());
    let grid = model.config.image_size / model.config.patch_size;
    let backend = FakeBackend {
        patches: grid * grid,
        dim: model.config.projection_dim,
        probe: probe.clone(),
    };
    let det = Detector::new(model.config, tokenizer, Box::new(backend), 1024);
    let metrics = Arc::new(Metrics::default());
    let (svc, worker) = DetectService::start(det, cfg, metrics.clone()).expect("starts");
    (svc, worker, probe, metrics)
}

/// Polls `cond` every millisecond for at most `within`; whether it came true.
pub(crate) async fn until(within: std::time::Duration, cond: impl Fn() -> bool) -> bool {
    let end = std::time::Instant::now() + within;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    cond()
}
