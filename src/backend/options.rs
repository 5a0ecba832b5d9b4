//! ONNX Runtime execution-provider options, as pure functions of the provider, the graph and
//! where it comes from: TensorRT's `trt_*` keys (precision flags, optimisation profile, timing and
//! engine caches, EP-context models) and the CUDA provider's. `ort.rs` registers them.

use std::path::Path;

use super::GraphSource;
use crate::vocab::{Graph, Precision};

/// A graph's single input as TensorRT's optimisation profile needs it: `name`, the dims after the
/// batch (`3x960x960`), and the largest batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileInput {
    pub name: &'static str,
    pub dims: String,
    pub max_batch: usize,
}

/// ONNX Runtime TensorRT provider options (`trt_*` keys) for one graph. Building: fp16/int8 flags,
/// a profile for batch 1..=max, the shared timing cache; saving: engine cache and an EP-context
/// model (`embed_mode` 0: the engine stays a file beside the context model, found by a relative
/// path, so the entry folder can be renamed into place); loading: the EP-context model only.
pub fn tensorrt_options(
    precision: Precision,
    graph: Graph,
    input: &ProfileInput,
    source: GraphSource<'_>,
    timing_cache: Option<&Path>,
) -> Vec<(&'static str, String)> {
    let flag = |b: bool| if b { "1" } else { "0" }.to_string();
    let mut o = vec![
        (
            "trt_fp16_enable",
            flag(matches!(precision, Precision::Fp16 | Precision::Int8)),
        ),
        ("trt_int8_enable", flag(precision == Precision::Int8)),
        ("trt_layer_norm_fp32_fallback", flag(true)),
    ];
    if let GraphSource::Load(path) = source {
        o.push(("trt_ep_context_file_path", path.display().to_string()));
        return o;
    }
    let shape = |b: usize| format!("{}:{b}x{}", input.name, input.dims);
    o.push(("trt_profile_min_shapes", shape(1)));
    o.push(("trt_profile_opt_shapes", shape(1)));
    o.push(("trt_profile_max_shapes", shape(input.max_batch.max(1))));
    if let Some(t) = timing_cache {
        o.push(("trt_timing_cache_enable", flag(true)));
        o.push(("trt_timing_cache_path", t.display().to_string()));
    }
    if let GraphSource::BuildAndSave { path, .. } = source {
        o.push(("trt_engine_cache_enable", flag(true)));
        // With `trt_dump_ep_context_model` the EP takes this path relative to the context model's
        // folder and writes it into the context model's `ep_cache_context` attribute. An absolute
        // path is logged as an error, lands in that attribute as it is (pointing into the staging
        // folder, which is renamed afterwards), and is refused when the context model is loaded
        // (ONNX Runtime 1.31 tensorrt_execution_provider.cc; onnxruntime #22131, #21307). "."
        // keeps the engines beside the context model, referenced by a relative name.
        o.push(("trt_engine_cache_path", ".".into()));
        o.push(("trt_engine_cache_prefix", graph.name().to_string()));
        o.push(("trt_dump_ep_context_model", flag(true)));
        o.push(("trt_ep_context_file_path", path.display().to_string()));
        o.push(("trt_ep_context_embed_mode", "0".into()));
    }
    o
}

/// TensorRT-RTX plugin EP options (`tensorrt_rtx_provider_options.h` of its wheel), each key
/// prefixed with the EP's name as `SessionBuilder::with_devices` expects: the optimisation profile
/// (batch 1..=max) and the runtime cache file of just-in-time kernels.
pub fn tensorrt_rtx_options(
    input: &ProfileInput,
    graph: Graph,
    runtime_cache: Option<&Path>,
) -> Vec<(String, String)> {
    let key = |k: &str| format!("{}.{k}", super::TENSORRT_RTX_EP);
    let shape = |b: usize| format!("{}:{b}x{}", input.name, input.dims);
    let mut o = vec![
        (key("nv_profile_min_shapes"), shape(1)),
        (key("nv_profile_opt_shapes"), shape(1)),
        (key("nv_profile_max_shapes"), shape(input.max_batch.max(1))),
    ];
    if let Some(dir) = runtime_cache {
        o.push((
            key("nv_runtime_cache_path"),
            dir.join(format!("{}.cache", graph.name()))
                .display()
                .to_string(),
        ));
    }
    o
}

/// ONNX Runtime CUDA provider options: TF32 off (exact fp32), CUDA graphs for the image graph with
/// `reduce-overhead`, exhaustive cuDNN search with `max-autotune`.
pub fn cuda_options(
    cuda_graphs: bool,
    exhaustive_conv: bool,
    graph: Graph,
) -> Vec<(&'static str, String)> {
    vec![
        ("use_tf32", "0".into()),
        (
            "enable_cuda_graph",
            if cuda_graphs && graph == Graph::Image {
                "1"
            } else {
                "0"
            }
            .into(),
        ),
        (
            "cudnn_conv_algo_search",
            if exhaustive_conv {
                "EXHAUSTIVE"
            } else {
                "HEURISTIC"
            }
            .into(),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(o: &'a [(&'static str, String)], k: &str) -> Option<&'a str> {
        o.iter().find(|(key, _)| *key == k).map(|(_, v)| v.as_str())
    }

    fn image_input() -> ProfileInput {
        ProfileInput {
            name: "pixel_values",
            dims: "3x960x960".into(),
            max_batch: 4,
        }
    }

    #[test]
    fn tensorrt_rtx_options_are_keyed_by_its_ep_name() {
        let o = tensorrt_rtx_options(&image_input(), Graph::Image, Some(Path::new("/c/rtx")));
        let get = |k: &str| {
            o.iter()
                .find(|(key, _)| key == &format!("NvTensorRTRTXExecutionProvider.{k}"))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            get("nv_profile_min_shapes"),
            Some("pixel_values:1x3x960x960")
        );
        assert_eq!(
            get("nv_profile_opt_shapes"),
            Some("pixel_values:1x3x960x960")
        );
        assert_eq!(
            get("nv_profile_max_shapes"),
            Some("pixel_values:4x3x960x960")
        );
        assert_eq!(get("nv_runtime_cache_path"), Some("/c/rtx/image.cache"));
        assert_eq!(o.len(), 4);
        assert_eq!(
            tensorrt_rtx_options(&image_input(), Graph::Text, None).len(),
            3
        );
    }

    #[test]
    fn tensorrt_build_and_save_options() {
        let ctx = Path::new("/c/.tmp-k-1/image_ctx.onnx");
        let timing = Path::new("/c/tensorrt-timing");
        let o = tensorrt_options(
            Precision::Fp16,
            Graph::Image,
            &image_input(),
            GraphSource::BuildAndSave {
                bytes: &[],
                path: ctx,
                weights: "image.weights",
            },
            Some(timing),
        );
        assert_eq!(get(&o, "trt_fp16_enable"), Some("1"));
        assert_eq!(get(&o, "trt_int8_enable"), Some("0"));
        assert_eq!(
            get(&o, "trt_profile_min_shapes"),
            Some("pixel_values:1x3x960x960")
        );
        assert_eq!(
            get(&o, "trt_profile_opt_shapes"),
            Some("pixel_values:1x3x960x960")
        );
        assert_eq!(
            get(&o, "trt_profile_max_shapes"),
            Some("pixel_values:4x3x960x960")
        );
        assert_eq!(get(&o, "trt_timing_cache_enable"), Some("1"));
        assert_eq!(get(&o, "trt_timing_cache_path"), Some("/c/tensorrt-timing"));
        // The engine cache is the context model's folder, given relative to it: the EP refuses
        // an absolute path in a context model.
        assert_eq!(get(&o, "trt_engine_cache_enable"), Some("1"));
        assert_eq!(get(&o, "trt_engine_cache_path"), Some("."));
        assert_eq!(get(&o, "trt_engine_cache_prefix"), Some("image"));
        assert_eq!(get(&o, "trt_dump_ep_context_model"), Some("1"));
        assert_eq!(
            get(&o, "trt_ep_context_file_path"),
            Some("/c/.tmp-k-1/image_ctx.onnx")
        );
        assert_eq!(get(&o, "trt_ep_context_embed_mode"), Some("0"));
        // Keys are unique.
        let mut keys: Vec<_> = o.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), o.len());
    }

    #[test]
    fn tensorrt_load_and_in_memory_options() {
        let ctx = Path::new("/c/abc/text_ctx.onnx");
        let text = ProfileInput {
            name: "input_ids",
            dims: "16".into(),
            max_batch: 64,
        };
        let o = tensorrt_options(
            Precision::Int8,
            Graph::Text,
            &text,
            GraphSource::Load(ctx),
            Some(Path::new("/t")),
        );
        assert_eq!(get(&o, "trt_int8_enable"), Some("1"));
        assert_eq!(
            get(&o, "trt_fp16_enable"),
            Some("1"),
            "int8 falls back to fp16"
        );
        assert_eq!(
            get(&o, "trt_ep_context_file_path"),
            Some("/c/abc/text_ctx.onnx")
        );
        for k in [
            "trt_dump_ep_context_model",
            "trt_engine_cache_enable",
            "trt_profile_max_shapes",
            "trt_timing_cache_enable",
        ] {
            assert_eq!(get(&o, k), None, "{k} is not set when loading");
        }
        let o = tensorrt_options(
            Precision::Fp32,
            Graph::Text,
            &text,
            GraphSource::Build(&[]),
            None,
        );
        assert_eq!(get(&o, "trt_fp16_enable"), Some("0"));
        assert_eq!(get(&o, "trt_profile_max_shapes"), Some("input_ids:64x16"));
        assert_eq!(get(&o, "trt_dump_ep_context_model"), None);
        assert_eq!(get(&o, "trt_timing_cache_enable"), None);
    }

    #[test]
    fn cuda_options_follow_the_compile_mode() {
        let o = cuda_options(true, false, Graph::Image);
        assert_eq!(get(&o, "use_tf32"), Some("0"));
        assert_eq!(get(&o, "enable_cuda_graph"), Some("1"));
        assert_eq!(get(&o, "cudnn_conv_algo_search"), Some("HEURISTIC"));
        // CUDA graphs need fixed shapes: never for the text graph (query count varies).
        assert_eq!(
            get(&cuda_options(true, false, Graph::Text), "enable_cuda_graph"),
            Some("0")
        );
        let o = cuda_options(false, true, Graph::Image);
        assert_eq!(get(&o, "enable_cuda_graph"), Some("0"));
        assert_eq!(get(&o, "cudnn_conv_algo_search"), Some("EXHAUSTIVE"));
    }
}
