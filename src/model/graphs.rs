//! Builds the two OWLv2 ONNX graphs natively from a checkpoint (see `docs/owlv2.md`):
//!
//! - **image graph**: `pixel_values [B,3,S,S]` → `class_embeds [B,P,C]` (normalised), `logit_shift [B,P]`,
//!   `logit_scale [B,P]` (elu+1 applied), `pred_boxes [B,P,4]` (box bias and sigmoid applied),
//!   `objectness_logits [B,P]`; the batch dimension is dynamic.
//! - **text graph**: `input_ids [N,L]` (int64) → `query_embeds [N,C]`, normalised twice exactly as
//!   transformers (`t/‖t‖`, then `/(‖·‖+1e-6)` in the class head).
//!
//! F32 weights are initializers that point into `model.safetensors` (external data), so the graph
//! bytes stay small; the session must be told the checkpoint folder. Every tensor name and shape is
//! checked against `config.json` while building.

use super::checkpoint::Checkpoint;
use super::config::{OwlConfig, TowerConfig};
use super::ModelError;
use crate::onnx::builder::Dim;
use crate::onnx::proto::data_type;
use crate::onnx::{Attr, GraphBuilder};

/// Version of the graph builder; part of every optimized-artifact cache key.
pub const GRAPH_BUILDER_VERSION: &str = "owlv2-graphs-1";

/// Output names of the image graph, in order.
pub const IMAGE_OUTPUTS: [&str; 5] = [
    "class_embeds",
    "logit_shift",
    "logit_scale",
    "pred_boxes",
    "objectness_logits",
];

/// How attention is expressed in the image tower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// `com.microsoft.MultiHeadAttention` (fused, no `[B,H,N,N]` score tensor in memory).
    Fused,
    /// Plain ONNX ops (MatMul, Softmax, MatMul).
    Unfused,
}

/// Numeric precision of the image tower's encoder projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Exact: every weight as stored (converted to f32).
    #[default]
    Fp32,
    /// The encoder's q/k/v/out/fc1/fc2 weights quantized per output channel (symmetric, in the
    /// given range) by the graph builder, run as dynamically quantized MatMuls
    /// (`com.microsoft.DynamicQuantizeMatMul`). Embeddings, layer norms, attention and heads stay f32.
    Int8(Int8Weights),
}

impl Precision {
    /// Int8 with the weight range this host's CPU computes without saturation.
    pub fn int8() -> Self {
        Precision::Int8(Int8Weights::for_host())
    }

    /// Name used in cache keys and reports (`fp32`, `int8`, `int8-7bit`).
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Int8(r) => r.name(),
        }
    }
}

/// Range of the int8 encoder weights, chosen for the CPU that builds (and caches) the artifact.
///
/// ONNX Runtime's u8×s8 GEMM on x86-64 without AVX-512 VNNI (AVX2, AVX-512 without VNNI) multiplies
/// with `vpmaddubsw`, which adds pairs of u8·s8 products into a *saturating* 16-bit sum: with
/// weights in ±127 and activations up to 255 a pair reaches 64 770 and is clipped at 32 767, so
/// whole dot products go wrong. 7-bit weights (±63) keep every pair within 255·63·2 = 32 130 (the
/// `reduce_range` of ONNX Runtime's own quantization tools). VNNI (`vpdpbusd`) and arm64 accumulate
/// in 32 bits, so they keep the full 8-bit range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Int8Weights {
    /// Symmetric 8-bit weights in ±127.
    Full,
    /// Symmetric 7-bit weights in ±63: no 16-bit saturation on x86-64 without VNNI.
    Reduced,
}

impl Int8Weights {
    /// The safe range for this host's CPU.
    pub fn for_host() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512bw")
            {
                Int8Weights::Full
            } else {
                Int8Weights::Reduced
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Int8Weights::Full
        }
    }

    /// The largest quantized magnitude.
    pub fn max_level(self) -> f32 {
        match self {
            Int8Weights::Full => 127.0,
            Int8Weights::Reduced => 63.0,
        }
    }

    /// Name used in cache keys, reports and logs.
    pub fn name(self) -> &'static str {
        match self {
            Int8Weights::Full => "int8",
            Int8Weights::Reduced => "int8-7bit",
        }
    }
}

/// Quantizes a PyTorch `[out, in]` weight per output channel into the `[in, out]` int8 layout
/// `DynamicQuantizeMatMul` reads (symmetric, scale = max|w| / the range's largest level),
/// returning `(q, scales)`.
pub fn quantize_per_channel(
    w: &[f32],
    dout: usize,
    din: usize,
    range: Int8Weights,
) -> (Vec<i8>, Vec<f32>) {
    let level = range.max_level();
    let mut scales = vec![0f32; dout];
    let mut q = vec![0i8; din * dout];
    for o in 0..dout {
        let row = &w[o * din..(o + 1) * din];
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / level } else { 1.0 };
        scales[o] = scale;
        for (i, v) in row.iter().enumerate() {
            q[i * dout + o] = (v / scale).round().clamp(-level, level) as i8;
        }
    }
    (q, scales)
}

/// The serialised graphs of one model.
pub struct Graphs {
    pub image: Vec<u8>,
    pub text: Vec<u8>,
}

/// Builds both graphs.
pub fn build(
    cfg: &OwlConfig,
    ckpt: &Checkpoint,
    attention: Attention,
) -> Result<Graphs, ModelError> {
    Ok(Graphs {
        image: build_image_graph(cfg, ckpt, attention, Precision::Fp32)?,
        text: build_text_graph(cfg, ckpt)?,
    })
}

/// OWLv2's box bias in f32 (`[P,4]`, row-major patches): `[coord_x, coord_y, size, size]`.
pub fn box_bias(grid: usize) -> Vec<f32> {
    let g = grid as f32;
    let logit = |c: f32| (c + 1e-4f32).ln() - (-c + 1e-4f32).ln_1p();
    let size = logit(1.0f32 / g);
    let mut out = Vec::with_capacity(grid * grid * 4);
    for row in 1..=grid {
        for col in 1..=grid {
            let cx = (col as f32 / g).clamp(0.0, 1.0);
            let cy = (row as f32 / g).clamp(0.0, 1.0);
            out.extend_from_slice(&[logit(cx), logit(cy), size, size]);
        }
    }
    out
}

struct Ctx<'a> {
    b: GraphBuilder,
    ckpt: &'a Checkpoint,
    precision: Precision,
}

impl Ctx<'_> {
    fn w(&mut self, name: &str, dims: &[usize]) -> Result<String, ModelError> {
        let data = self.ckpt.weight(name, dims)?;
        Ok(self.b.weight(name, dims, data))
    }

    /// `x [M,in] → [M,out]` with PyTorch's `[out,in]` weight (Gemm transB=1).
    fn linear(
        &mut self,
        x: &str,
        prefix: &str,
        din: usize,
        dout: usize,
        bias: bool,
    ) -> Result<String, ModelError> {
        let w = self.w(&format!("{prefix}.weight"), &[dout, din])?;
        if bias {
            let b = self.w(&format!("{prefix}.bias"), &[dout])?;
            Ok(self.b.op("Gemm", &[x, &w, &b], &[Attr::Int("transB", 1)]))
        } else {
            Ok(self.b.op("Gemm", &[x, &w], &[Attr::Int("transB", 1)]))
        }
    }

    /// An encoder projection: `linear`, or its int8 dynamically quantized form.
    fn proj(
        &mut self,
        x: &str,
        prefix: &str,
        din: usize,
        dout: usize,
    ) -> Result<String, ModelError> {
        let Precision::Int8(range) = self.precision else {
            return self.linear(x, prefix, din, dout, true);
        };
        let w = self
            .ckpt
            .read_f32_checked(&format!("{prefix}.weight"), &[dout, din])?;
        let (q, scales) = quantize_per_channel(&w, dout, din, range);
        let qn = self
            .b
            .const_i8(&format!("{prefix}.weight_int8"), &[din, dout], &q);
        let sn = self.b.const_f32(&[dout], &scales);
        let zn = self.b.const_i8(
            &format!("{prefix}.weight_zero_point"),
            &[dout],
            &vec![0i8; dout],
        );
        let bias = self.w(&format!("{prefix}.bias"), &[dout])?;
        Ok(self
            .b
            .ms_op("DynamicQuantizeMatMul", &[x, &qn, &sn, &zn, &bias], &[]))
    }

    fn layer_norm(
        &mut self,
        x: &str,
        prefix: &str,
        d: usize,
        eps: f32,
    ) -> Result<String, ModelError> {
        let g = self.w(&format!("{prefix}.weight"), &[d])?;
        let b = self.w(&format!("{prefix}.bias"), &[d])?;
        Ok(self.b.op(
            "LayerNormalization",
            &[x, &g, &b],
            &[Attr::Int("axis", -1), Attr::Float("epsilon", eps)],
        ))
    }

    fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.b.const_i64(shape);
        self.b.op("Reshape", &[x, &s], &[])
    }

    fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.b
            .op("Transpose", &[x], &[Attr::Ints("perm", perm.to_vec())])
    }

    /// `x * sigmoid(1.702 x)`.
    fn quick_gelu(&mut self, x: &str) -> String {
        let k = self.b.scalar(1.702);
        let t = self.b.op("Mul", &[x, &k], &[]);
        let s = self.b.op("Sigmoid", &[&t], &[]);
        self.b.op("Mul", &[x, &s], &[])
    }

    /// Exact GELU: `0.5 x (1 + erf(x/√2))`.
    fn gelu(&mut self, x: &str) -> String {
        let r = self.b.scalar(std::f32::consts::FRAC_1_SQRT_2);
        let half = self.b.scalar(0.5);
        let one = self.b.scalar(1.0);
        let t = self.b.op("Mul", &[x, &r], &[]);
        let e = self.b.op("Erf", &[&t], &[]);
        let e1 = self.b.op("Add", &[&e, &one], &[]);
        let xe = self.b.op("Mul", &[x, &e1], &[]);
        self.b.op("Mul", &[&xe, &half], &[])
    }

    /// `x / (‖x‖₂ + eps)` over the last axis (`eps = None`: no epsilon).
    fn l2_normalize(&mut self, x: &str, eps: Option<f32>) -> String {
        let n = self.b.op(
            "ReduceL2",
            &[x],
            &[Attr::Ints("axes", vec![-1]), Attr::Int("keepdims", 1)],
        );
        let n = match eps {
            Some(e) => {
                let e = self.b.scalar(e);
                self.b.op("Add", &[&n, &e], &[])
            }
            None => n,
        };
        self.b.op("Div", &[x, &n], &[])
    }

    /// One pre-LN encoder layer on flattened tokens `x [B*L, D]`.
    fn encoder_layer(
        &mut self,
        x: &str,
        prefix: &str,
        t: &TowerConfig,
        seq: usize,
        attention: AttentionKind,
    ) -> Result<String, ModelError> {
        let d = t.hidden_size;
        let h = self.layer_norm(x, &format!("{prefix}.layer_norm1"), d, t.layer_norm_eps)?;
        let q = self.proj(&h, &format!("{prefix}.self_attn.q_proj"), d, d)?;
        let k = self.proj(&h, &format!("{prefix}.self_attn.k_proj"), d, d)?;
        let v = self.proj(&h, &format!("{prefix}.self_attn.v_proj"), d, d)?;
        let a = self.attention(&q, &k, &v, t, seq, attention);
        let o = self.proj(&a, &format!("{prefix}.self_attn.out_proj"), d, d)?;
        let x = self.b.op("Add", &[x, &o], &[]);
        let h = self.layer_norm(&x, &format!("{prefix}.layer_norm2"), d, t.layer_norm_eps)?;
        let f = self.proj(&h, &format!("{prefix}.mlp.fc1"), d, t.intermediate_size)?;
        let f = self.quick_gelu(&f);
        let f = self.proj(&f, &format!("{prefix}.mlp.fc2"), t.intermediate_size, d)?;
        Ok(self.b.op("Add", &[&x, &f], &[]))
    }

    /// Multi-head self-attention on flattened `q,k,v [B*L, D]`; returns `[B*L, D]`.
    fn attention(
        &mut self,
        q: &str,
        k: &str,
        v: &str,
        t: &TowerConfig,
        seq: usize,
        kind: AttentionKind,
    ) -> String {
        let d = t.hidden_size as i64;
        let heads = t.num_heads as i64;
        let hd = t.head_dim() as i64;
        let scale = 1.0 / (t.head_dim() as f32).sqrt();
        match kind {
            AttentionKind::Fused => {
                let q3 = self.reshape(q, &[-1, seq as i64, d]);
                let k3 = self.reshape(k, &[-1, seq as i64, d]);
                let v3 = self.reshape(v, &[-1, seq as i64, d]);
                let a = self.b.ms_op(
                    "MultiHeadAttention",
                    &[&q3, &k3, &v3],
                    &[Attr::Int("num_heads", heads), Attr::Float("scale", scale)],
                );
                self.reshape(&a, &[-1, d])
            }
            AttentionKind::Unfused { causal } => {
                let l = seq as i64;
                let q4 = self.reshape(q, &[-1, l, heads, hd]);
                let q4 = self.transpose(&q4, &[0, 2, 1, 3]);
                let k4 = self.reshape(k, &[-1, l, heads, hd]);
                let k4 = self.transpose(&k4, &[0, 2, 3, 1]);
                let v4 = self.reshape(v, &[-1, l, heads, hd]);
                let v4 = self.transpose(&v4, &[0, 2, 1, 3]);
                let s = self.b.op("MatMul", &[&q4, &k4], &[]);
                let sc = self.b.scalar(scale);
                let mut s = self.b.op("Mul", &[&s, &sc], &[]);
                if causal {
                    let mut mask = vec![0f32; seq * seq];
                    for i in 0..seq {
                        for j in (i + 1)..seq {
                            mask[i * seq + j] = -1e9;
                        }
                    }
                    let m = self.b.const_f32(&[seq, seq], &mask);
                    s = self.b.op("Add", &[&s, &m], &[]);
                }
                let p = self.b.op("Softmax", &[&s], &[Attr::Int("axis", -1)]);
                let o = self.b.op("MatMul", &[&p, &v4], &[]);
                let o = self.transpose(&o, &[0, 2, 1, 3]);
                self.reshape(&o, &[-1, d])
            }
        }
    }

    /// `dense0 → GELU → dense1 → GELU → dense2` on `x [M, D]`.
    fn mlp_head(
        &mut self,
        x: &str,
        prefix: &str,
        d: usize,
        out: usize,
    ) -> Result<String, ModelError> {
        let h = self.linear(x, &format!("{prefix}.dense0"), d, d, true)?;
        let h = self.gelu(&h);
        let h = self.linear(&h, &format!("{prefix}.dense1"), d, d, true)?;
        let h = self.gelu(&h);
        self.linear(&h, &format!("{prefix}.dense2"), d, out, true)
    }
}

#[derive(Debug, Clone, Copy)]
enum AttentionKind {
    Fused,
    Unfused { causal: bool },
}

fn image_graph_ctx<'a>(
    cfg: &OwlConfig,
    ckpt: &'a Checkpoint,
    attention: Attention,
    precision: Precision,
) -> Result<Ctx<'a>, ModelError> {
    let mut c = Ctx {
        b: GraphBuilder::new("owlv2_image"),
        ckpt,
        precision,
    };
    let v = &cfg.vision;
    let d = v.hidden_size;
    let p = cfg.patch_size;
    let g = cfg.grid();
    let np = cfg.num_patches();
    let n = np + 1;
    let s = cfg.image_size;
    let pre = "owlv2.vision_model";
    c.b.input(
        "pixel_values",
        data_type::FLOAT,
        &[
            Dim::Named("batch"),
            Dim::Fixed(3),
            Dim::Fixed(s),
            Dim::Fixed(s),
        ],
    );
    // Patch embedding and tokens.
    let pw = c.w(
        &format!("{pre}.embeddings.patch_embedding.weight"),
        &[d, 3, p, p],
    )?;
    let conv = c.b.op(
        "Conv",
        &["pixel_values", &pw],
        &[
            Attr::Ints("kernel_shape", vec![p as i64, p as i64]),
            Attr::Ints("strides", vec![p as i64, p as i64]),
        ],
    );
    let patches = c.reshape(&conv, &[0, d as i64, np as i64]);
    let patches = c.transpose(&patches, &[0, 2, 1]);
    let cls = c.w(&format!("{pre}.embeddings.class_embedding"), &[d])?;
    let cls = c.reshape(&cls, &[1, 1, d as i64]);
    let batch = c.b.op(
        "Shape",
        &["pixel_values"],
        &[Attr::Int("start", 0), Attr::Int("end", 1)],
    );
    let tail = c.b.const_i64(&[1, d as i64]);
    let cls_shape = c.b.op("Concat", &[&batch, &tail], &[Attr::Int("axis", 0)]);
    let cls = c.b.op("Expand", &[&cls, &cls_shape], &[]);
    let x = c.b.op("Concat", &[&cls, &patches], &[Attr::Int("axis", 1)]);
    let pos = c.w(
        &format!("{pre}.embeddings.position_embedding.weight"),
        &[n, d],
    )?;
    let x = c.b.op("Add", &[&x, &pos], &[]);
    let x = c.layer_norm(&x, &format!("{pre}.pre_layernorm"), d, v.layer_norm_eps)?;
    let mut x = c.reshape(&x, &[-1, d as i64]);
    let kind = match attention {
        Attention::Fused => AttentionKind::Fused,
        Attention::Unfused => AttentionKind::Unfused { causal: false },
    };
    for i in 0..v.num_layers {
        x = c.encoder_layer(&x, &format!("{pre}.encoder.layers.{i}"), v, n, kind)?;
    }
    // Post-LN on every token, multiply patch tokens by the class token, final layer norm.
    let e = c.layer_norm(&x, &format!("{pre}.post_layernorm"), d, v.layer_norm_eps)?;
    let e = c.reshape(&e, &[-1, n as i64, d as i64]);
    let axes = c.b.const_i64(&[1]);
    let z = c.b.const_i64(&[0]);
    let one = c.b.const_i64(&[1]);
    let end = c.b.const_i64(&[n as i64]);
    let cls_tok = c.b.op("Slice", &[&e, &z, &one, &axes], &[]);
    let patch_tok = c.b.op("Slice", &[&e, &one, &end, &axes], &[]);
    let feats = c.b.op("Mul", &[&patch_tok, &cls_tok], &[]);
    let feats = c.layer_norm(&feats, "layer_norm", d, v.layer_norm_eps)?;
    let f2 = c.reshape(&feats, &[-1, d as i64]);
    // Class head.
    let cdim = cfg.class_dim();
    let ce = c.linear(&f2, "class_head.dense0", d, cdim, true)?;
    let ce = c.l2_normalize(&ce, Some(1e-6));
    let ce_shape = c.b.const_i64(&[-1, np as i64, cdim as i64]);
    c.b.op_named("Reshape", &[&ce, &ce_shape], &[], "class_embeds");
    let shift = c.linear(&f2, "class_head.logit_shift", d, 1, true)?;
    let bp = c.b.const_i64(&[-1, np as i64]);
    c.b.op_named("Reshape", &[&shift, &bp], &[], "logit_shift");
    let scale = c.linear(&f2, "class_head.logit_scale", d, 1, true)?;
    let scale = c.b.op("Elu", &[&scale], &[Attr::Float("alpha", 1.0)]);
    let one_f = c.b.scalar(1.0);
    let scale = c.b.op("Add", &[&scale, &one_f], &[]);
    c.b.op_named("Reshape", &[&scale, &bp], &[], "logit_scale");
    // Box head.
    let bx = c.mlp_head(&f2, "box_head", d, 4)?;
    let bx = c.reshape(&bx, &[-1, np as i64, 4]);
    let bias = c.b.const_f32(&[np, 4], &box_bias(g));
    let bx = c.b.op("Add", &[&bx, &bias], &[]);
    c.b.op_named("Sigmoid", &[&bx], &[], "pred_boxes");
    // Objectness head.
    let ob = c.mlp_head(&f2, "objectness_head", d, 1)?;
    c.b.op_named("Reshape", &[&ob, &bp], &[], "objectness_logits");

    let bdim = Dim::Named("batch");
    c.b.output(
        "class_embeds",
        data_type::FLOAT,
        &[bdim.clone(), Dim::Fixed(np), Dim::Fixed(cdim)],
    );
    c.b.output(
        "logit_shift",
        data_type::FLOAT,
        &[bdim.clone(), Dim::Fixed(np)],
    );
    c.b.output(
        "logit_scale",
        data_type::FLOAT,
        &[bdim.clone(), Dim::Fixed(np)],
    );
    c.b.output(
        "pred_boxes",
        data_type::FLOAT,
        &[bdim.clone(), Dim::Fixed(np), Dim::Fixed(4)],
    );
    c.b.output(
        "objectness_logits",
        data_type::FLOAT,
        &[bdim, Dim::Fixed(np)],
    );
    Ok(c)
}

/// Builds and serialises the image graph.
pub fn build_image_graph(
    cfg: &OwlConfig,
    ckpt: &Checkpoint,
    attention: Attention,
    precision: Precision,
) -> Result<Vec<u8>, ModelError> {
    let c = image_graph_ctx(cfg, ckpt, attention, precision)?;
    Ok(c.b.finish(
        "OWLv2 image tower and heads",
        &[("graph_builder_version", GRAPH_BUILDER_VERSION.into())],
    ))
}

/// Builds and serialises the text graph.
pub fn build_text_graph(cfg: &OwlConfig, ckpt: &Checkpoint) -> Result<Vec<u8>, ModelError> {
    let mut c = Ctx {
        b: GraphBuilder::new("owlv2_text"),
        ckpt,
        precision: Precision::Fp32,
    };
    let t = &cfg.text;
    let d = t.hidden_size;
    let l = cfg.text_len;
    let pre = "owlv2.text_model";
    c.b.input(
        "input_ids",
        data_type::INT64,
        &[Dim::Named("queries"), Dim::Fixed(l)],
    );
    let tok = c.w(
        &format!("{pre}.embeddings.token_embedding.weight"),
        &[cfg.vocab_size, d],
    )?;
    let x =
        c.b.op("Gather", &[&tok, "input_ids"], &[Attr::Int("axis", 0)]);
    let pos = c.w(
        &format!("{pre}.embeddings.position_embedding.weight"),
        &[l, d],
    )?;
    let x = c.b.op("Add", &[&x, &pos], &[]);
    let mut x = c.reshape(&x, &[-1, d as i64]);
    for i in 0..t.num_layers {
        x = c.encoder_layer(
            &x,
            &format!("{pre}.encoder.layers.{i}"),
            t,
            l,
            AttentionKind::Unfused { causal: true },
        )?;
    }
    let x = c.layer_norm(&x, &format!("{pre}.final_layer_norm"), d, t.layer_norm_eps)?;
    let x3 = c.reshape(&x, &[-1, l as i64, d as i64]);
    // Pooled token: the first EOS, i.e. the first argmax of the ids (EOS has the largest id).
    let idx = c.b.op(
        "ArgMax",
        &["input_ids"],
        &[
            Attr::Int("axis", 1),
            Attr::Int("keepdims", 1),
            Attr::Int("select_last_index", 0),
        ],
    );
    let ax = c.b.const_i64(&[2]);
    let idx = c.b.op("Unsqueeze", &[&idx, &ax], &[]);
    let exp = c.b.const_i64(&[1, 1, d as i64]);
    let idx = c.b.op("Expand", &[&idx, &exp], &[]);
    let pooled =
        c.b.op("GatherElements", &[&x3, &idx], &[Attr::Int("axis", 1)]);
    let pooled = c.reshape(&pooled, &[-1, d as i64]);
    let proj = c.linear(
        &pooled,
        "owlv2.text_projection",
        d,
        cfg.projection_dim,
        false,
    )?;
    let t1 = c.l2_normalize(&proj, None);
    let q = c.l2_normalize(&t1, Some(1e-6));
    c.b.op_named("Identity", &[&q], &[], "query_embeds");
    c.b.output(
        "query_embeds",
        data_type::FLOAT,
        &[Dim::Named("queries"), Dim::Fixed(cfg.projection_dim)],
    );
    Ok(c.b.finish(
        "OWLv2 text tower and query normalisation",
        &[("graph_builder_version", GRAPH_BUILDER_VERSION.into())],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_quantization_round_trips_within_half_a_step() {
        // 2 outputs x 3 inputs, PyTorch layout.
        let w = [0.5f32, -1.0, 0.25, 0.0, 0.0, 0.0];
        let (q, s) = quantize_per_channel(&w, 2, 3, Int8Weights::Full);
        assert_eq!(s[0], 1.0 / 127.0);
        assert_eq!(s[1], 1.0); // all-zero row: scale 1, values 0
                               // [in, out] layout: q[i * 2 + o]
        assert_eq!(q[0], 64); // 0.5 * 127 = 63.5 -> 64
        assert_eq!(q[2], -127);
        assert_eq!(q[4], 32); // 31.75 -> 32
        assert!(q[1] == 0 && q[3] == 0 && q[5] == 0);
        for (i, v) in w[..3].iter().enumerate() {
            assert!((q[i * 2] as f32 * s[0] - v).abs() <= s[0] / 2.0 + 1e-7);
        }
        let (q, s) = quantize_per_channel(&w, 2, 3, Int8Weights::Reduced);
        assert_eq!(s[0], 1.0 / 63.0);
        // 0.5 / (1/63) is 31.499998 in f32 (rounds to 31); 0.25 → 15.75 → 16.
        assert_eq!((q[0], q[2], q[4]), (31, -63, 16));
        for (i, v) in w[..3].iter().enumerate() {
            assert!((q[i * 2] as f32 * s[0] - v).abs() <= s[0] / 2.0 + 1e-7);
        }
    }

    #[test]
    fn reduced_weights_cannot_saturate_a_sixteen_bit_pair_sum() {
        // vpmaddubsw adds two u8 x s8 products into a saturating i16.
        let pair = |level: f32| 2 * 255 * level as i32;
        assert!(pair(Int8Weights::Reduced.max_level()) <= i16::MAX as i32);
        assert!(pair(Int8Weights::Full.max_level()) > i16::MAX as i32);
        // Quantized values never leave the range, whatever the row.
        let w: Vec<f32> = (0..64).map(|i| (i as f32 - 31.5) * 0.37).collect();
        let (q, _) = quantize_per_channel(&w, 1, 64, Int8Weights::Reduced);
        assert_eq!(q.iter().map(|v| v.unsigned_abs()).max(), Some(63));
    }

    #[test]
    fn host_range_is_full_only_where_pairs_accumulate_in_32_bits() {
        let r = Int8Weights::for_host();
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            r == Int8Weights::Full,
            std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512bw")
        );
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(r, Int8Weights::Full);
    }

    #[test]
    fn box_bias_matches_reference_values() {
        let g = 60;
        let b = box_bias(g);
        assert_eq!(b.len(), g * g * 4);
        // Last patch: c = 1 → 9.2102747 in f32 (docs/owlv2.md#heads); first patch x: c = 1/60.
        let last = &b[(g * g - 1) * 4..];
        assert!((last[0] - 9.210_275).abs() < 2e-6, "{}", last[0]);
        assert!((last[1] - 9.210_275).abs() < 2e-6);
        let c = 1.0f64 / 60.0;
        let expect = (c + 1e-4).ln() - (-c + 1e-4).ln_1p();
        assert!((b[0] as f64 - expect).abs() < 1e-5, "{} vs {expect}", b[0]);
        // Size bias is the same for every patch and equals the coord formula at 1/g.
        assert_eq!(b[2], b[3]);
        assert!((b[2] as f64 - expect).abs() < 1e-5);
        // Row-major: patch 1 moves x, keeps y.
        assert!(b[4] > b[0]);
        assert_eq!(b[5], b[1]);
        // Patch g starts the second row.
        assert_eq!(b[g * 4], b[0]);
        assert!(b[g * 4 + 1] > b[1]);
    }
}
