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
use super::error::ModelError;
pub use super::quant::{quantize_per_channel, saturation_probe, Int8Weights, SaturationProbe};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attention {
    /// `com.microsoft.MultiHeadAttention` (fused, no `[B,H,N,N]` score tensor in memory).
    Fused,
    /// Plain ONNX ops (MatMul, Softmax, MatMul).
    Unfused,
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
    /// Int8 encoder projections in this weight range, or exact f32 (`None`).
    int8: Option<Int8Weights>,
    /// Linear layers as `MatMul` (+ `Add`) of the transposed weight instead of `Gemm`: ONNX
    /// Runtime's arm64 bf16 fast-math path is in its MatMul kernel only.
    matmul: bool,
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
        if self.matmul {
            // Transpose of a constant: folded into an [in, out] initializer by ONNX Runtime.
            let wt = self
                .b
                .op("Transpose", &[&w], &[Attr::Ints("perm", vec![1, 0])]);
            let y = self.b.op("MatMul", &[x, &wt], &[]);
            if !bias {
                return Ok(y);
            }
            let b = self.w(&format!("{prefix}.bias"), &[dout])?;
            return Ok(self.b.op("Add", &[&y, &b], &[]));
        }
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
        let Some(range) = self.int8 else {
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

impl Ctx<'_> {
    /// Patch embedding (a strided Conv), the class token, position embeddings and the pre-layer
    /// norm: `pixel_values` → tokens `[B·(P+1), D]`.
    fn vision_embeddings(&mut self, cfg: &OwlConfig, pre: &str) -> Result<String, ModelError> {
        let v = &cfg.vision;
        let (d, p, np) = (v.hidden_size, cfg.patch_size, cfg.num_patches());
        let pw = self.w(
            &format!("{pre}.embeddings.patch_embedding.weight"),
            &[d, 3, p, p],
        )?;
        let conv = self.b.op(
            "Conv",
            &["pixel_values", &pw],
            &[
                Attr::Ints("kernel_shape", vec![p as i64, p as i64]),
                Attr::Ints("strides", vec![p as i64, p as i64]),
            ],
        );
        let patches = self.reshape(&conv, &[0, d as i64, np as i64]);
        let patches = self.transpose(&patches, &[0, 2, 1]);
        let cls = self.w(&format!("{pre}.embeddings.class_embedding"), &[d])?;
        let cls = self.reshape(&cls, &[1, 1, d as i64]);
        let batch = self.b.op(
            "Shape",
            &["pixel_values"],
            &[Attr::Int("start", 0), Attr::Int("end", 1)],
        );
        let tail = self.b.const_i64(&[1, d as i64]);
        let cls_shape = self
            .b
            .op("Concat", &[&batch, &tail], &[Attr::Int("axis", 0)]);
        let cls = self.b.op("Expand", &[&cls, &cls_shape], &[]);
        let x = self
            .b
            .op("Concat", &[&cls, &patches], &[Attr::Int("axis", 1)]);
        let pos = self.w(
            &format!("{pre}.embeddings.position_embedding.weight"),
            &[np + 1, d],
        )?;
        let x = self.b.op("Add", &[&x, &pos], &[]);
        let x = self.layer_norm(&x, &format!("{pre}.pre_layernorm"), d, v.layer_norm_eps)?;
        Ok(self.reshape(&x, &[-1, d as i64]))
    }

    /// Post-LN on every token, patch tokens times the class token, final layer norm: encoder
    /// output → patch features `[B·P, D]`.
    fn patch_features(
        &mut self,
        cfg: &OwlConfig,
        x: &str,
        pre: &str,
    ) -> Result<String, ModelError> {
        let v = &cfg.vision;
        let (d, n) = (v.hidden_size, cfg.num_patches() + 1);
        let e = self.layer_norm(x, &format!("{pre}.post_layernorm"), d, v.layer_norm_eps)?;
        let e = self.reshape(&e, &[-1, n as i64, d as i64]);
        let axes = self.b.const_i64(&[1]);
        let z = self.b.const_i64(&[0]);
        let one = self.b.const_i64(&[1]);
        let end = self.b.const_i64(&[n as i64]);
        let cls_tok = self.b.op("Slice", &[&e, &z, &one, &axes], &[]);
        let patch_tok = self.b.op("Slice", &[&e, &one, &end, &axes], &[]);
        let feats = self.b.op("Mul", &[&patch_tok, &cls_tok], &[]);
        let feats = self.layer_norm(&feats, "layer_norm", d, v.layer_norm_eps)?;
        Ok(self.reshape(&feats, &[-1, d as i64]))
    }

    /// Class head (`class_embeds`, `logit_shift`, `logit_scale` = elu + 1), box head with the
    /// box bias and sigmoid (`pred_boxes`), objectness head (`objectness_logits`).
    fn heads(&mut self, cfg: &OwlConfig, f2: &str) -> Result<(), ModelError> {
        let (d, np, cdim) = (cfg.vision.hidden_size, cfg.num_patches(), cfg.class_dim());
        let ce = self.linear(f2, "class_head.dense0", d, cdim, true)?;
        let ce = self.l2_normalize(&ce, Some(1e-6));
        let ce_shape = self.b.const_i64(&[-1, np as i64, cdim as i64]);
        self.b
            .op_named("Reshape", &[&ce, &ce_shape], &[], "class_embeds");
        let shift = self.linear(f2, "class_head.logit_shift", d, 1, true)?;
        let bp = self.b.const_i64(&[-1, np as i64]);
        self.b
            .op_named("Reshape", &[&shift, &bp], &[], "logit_shift");
        let scale = self.linear(f2, "class_head.logit_scale", d, 1, true)?;
        let scale = self.b.op("Elu", &[&scale], &[Attr::Float("alpha", 1.0)]);
        let one_f = self.b.scalar(1.0);
        let scale = self.b.op("Add", &[&scale, &one_f], &[]);
        self.b
            .op_named("Reshape", &[&scale, &bp], &[], "logit_scale");
        let bx = self.mlp_head(f2, "box_head", d, 4)?;
        let bx = self.reshape(&bx, &[-1, np as i64, 4]);
        let bias = self.b.const_f32(&[np, 4], &box_bias(cfg.grid()));
        let bx = self.b.op("Add", &[&bx, &bias], &[]);
        self.b.op_named("Sigmoid", &[&bx], &[], "pred_boxes");
        let ob = self.mlp_head(f2, "objectness_head", d, 1)?;
        self.b
            .op_named("Reshape", &[&ob, &bp], &[], "objectness_logits");
        Ok(())
    }

    /// Declares the image graph's input and outputs (`IMAGE_OUTPUTS`, batch dimension dynamic).
    fn image_io(&mut self, cfg: &OwlConfig) {
        let (s, np, cdim) = (cfg.image_size, cfg.num_patches(), cfg.class_dim());
        let batch = Dim::Named("batch");
        self.b.input(
            "pixel_values",
            data_type::FLOAT,
            &[batch.clone(), Dim::Fixed(3), Dim::Fixed(s), Dim::Fixed(s)],
        );
        for (name, tail) in [
            ("class_embeds", vec![Dim::Fixed(np), Dim::Fixed(cdim)]),
            ("logit_shift", vec![Dim::Fixed(np)]),
            ("logit_scale", vec![Dim::Fixed(np)]),
            ("pred_boxes", vec![Dim::Fixed(np), Dim::Fixed(4)]),
            ("objectness_logits", vec![Dim::Fixed(np)]),
        ] {
            let mut dims = vec![batch.clone()];
            dims.extend(tail);
            self.b.output(name, data_type::FLOAT, &dims);
        }
    }
}

fn image_graph_ctx<'a>(
    cfg: &OwlConfig,
    ckpt: &'a Checkpoint,
    attention: Attention,
    int8: Option<Int8Weights>,
    matmul: bool,
) -> Result<Ctx<'a>, ModelError> {
    let mut c = Ctx {
        b: GraphBuilder::new("owlv2_image"),
        ckpt,
        int8,
        matmul,
    };
    let pre = "owlv2.vision_model";
    c.image_io(cfg);
    let mut x = c.vision_embeddings(cfg, pre)?;
    let kind = match attention {
        Attention::Fused => AttentionKind::Fused,
        Attention::Unfused => AttentionKind::Unfused { causal: false },
    };
    let n = cfg.num_patches() + 1;
    for i in 0..cfg.vision.num_layers {
        x = c.encoder_layer(
            &x,
            &format!("{pre}.encoder.layers.{i}"),
            &cfg.vision,
            n,
            kind,
        )?;
    }
    let f2 = c.patch_features(cfg, &x, pre)?;
    c.heads(cfg, &f2)?;
    Ok(c)
}

/// Builds and serialises the image graph (`matmul`: linear layers as MatMul + Add, for the arm64
/// bf16 fast-math kernels).
pub fn build_image_graph(
    cfg: &OwlConfig,
    ckpt: &Checkpoint,
    attention: Attention,
    int8: Option<Int8Weights>,
    matmul: bool,
) -> Result<Vec<u8>, ModelError> {
    let c = image_graph_ctx(cfg, ckpt, attention, int8, matmul)?;
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
        int8: None,
        matmul: false,
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
