//! Execution-provider registration never fails silently: with the CPU build of ONNX Runtime, asking
//! for TensorRT or CUDA is an error that names the provider (the daemon's fallback chain records it).

use intelligent_video::backend::Provider;
use intelligent_video::engine::{load_detector, DetectorOptions, EngineError};
use intelligent_video::vocab::Precision;

use crate::support::fixtures::model_dir;

#[test]
fn gpu_providers_fail_loudly_on_the_cpu_build() {
    let gpu = intelligent_video::gpu::discover();
    for provider in [
        Provider::TensorRt {
            precision: Precision::Fp16,
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
        match load_detector(&model_dir("tiny-a"), &opts) {
            Err(EngineError::Backend(e)) => {
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
    let cpu = load_detector(&model_dir("tiny-a"), &DetectorOptions::default()).expect("cpu loads");
    assert_eq!(cpu.backend_name(), "cpu");
}
