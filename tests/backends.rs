//! Execution-provider registration never fails silently: with the CPU build of ONNX Runtime, asking
//! for TensorRT or CUDA is an error that names the provider (the daemon's fallback chain records it).

mod common;

use intelligent_video::backend::{Provider, TrtPrecision};
use intelligent_video::pipeline::{Detector, DetectorOptions, PipelineError};

#[test]
fn gpu_providers_fail_loudly_on_the_cpu_build() {
    let gpu = intelligent_video::gpu::discover();
    for provider in [
        Provider::TensorRt {
            precision: TrtPrecision::Fp16,
            max_batch: 4,
            max_queries: 16,
            timing_cache: None,
        },
        Provider::Cuda {
            cuda_graphs: false,
            exhaustive_conv: false,
        },
    ] {
        let name = provider.name();
        let opts = DetectorOptions {
            provider,
            ..DetectorOptions::default()
        };
        match Detector::load(&common::model_dir("tiny-a"), &opts) {
            Err(PipelineError::Backend(e)) => {
                let msg = e.to_string();
                assert!(msg.contains(name), "{name}: {msg}");
                // The CPU build is named as the reason, before any session is tried.
                if !gpu.available {
                    assert!(msg.contains("was built without"), "{name}: {msg}");
                }
                eprintln!("{name}: {msg}");
            }
            Err(other) => panic!("{name}: unexpected error {other}"),
            Ok(d) => {
                // Only possible with a GPU build of ONNX Runtime on a GPU machine.
                assert!(gpu.available, "{name} loaded without a GPU");
                assert_eq!(d.backend_name(), name);
            }
        }
    }
    let cpu = Detector::load(&common::model_dir("tiny-a"), &DetectorOptions::default())
        .expect("cpu loads");
    assert_eq!(cpu.backend_name(), "cpu");
}
