//! Int8 weight quantization of the image tower's encoder projections: per output channel,
//! symmetric, in a weight range chosen for the CPU that builds the artifact (`Int8Weights`).

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
    /// The safe range for this host's CPU by its flags: what ONNX Runtime's kernel dispatch is
    /// expected to pick. The engine prefers asking the loaded kernels ([`saturation_probe`]) and
    /// falls back to this when it cannot.
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

/// A tiny graph that asks the loaded runtime's u8×s8 kernel whether it saturates pairs: the
/// dynamically quantized product of an all-ones `x` (quantized to 255) with weights of 127 (the
/// full range, scale 1/127), the same operator and weight layout as the image tower's projections.
/// Accumulating in 32 bits gives exactly [`SaturationProbe::K`] in every output; a saturating
/// 16-bit pair sum (`vpmaddubsw`) gives about K · 32 767 / 64 770, half of it.
pub struct SaturationProbe {
    /// The serialised ONNX model (input `x` `[M, K]`, output `y` `[M, N]`).
    pub graph: Vec<u8>,
    /// The input's shape.
    pub dims: [usize; 2],
    /// The input values (all ones).
    pub input: Vec<f32>,
}

impl SaturationProbe {
    const M: usize = 8;
    /// The reduction length, and the exact value of every output.
    pub const K: usize = 64;
    const N: usize = 32;

    /// The weight range the probed kernel needs, from its outputs: `Full` only when every output
    /// is exact (within f32 rounding of the scales); anything else (saturated, wrong shape, NaN)
    /// gives the always-safe `Reduced`.
    pub fn verdict(outputs: &[f32]) -> Int8Weights {
        let exact = Self::K as f32;
        let all_exact = outputs.len() == Self::M * Self::N
            && outputs.iter().all(|v| (v - exact).abs() <= 1e-3 * exact);
        if all_exact {
            Int8Weights::Full
        } else {
            Int8Weights::Reduced
        }
    }
}

/// Builds the [`SaturationProbe`].
pub fn saturation_probe() -> SaturationProbe {
    use crate::onnx::builder::{Dim, GraphBuilder};
    use crate::onnx::proto::data_type;
    let (m, k, n) = (SaturationProbe::M, SaturationProbe::K, SaturationProbe::N);
    let mut b = GraphBuilder::new("int8_saturation_probe");
    b.input("x", data_type::FLOAT, &[Dim::Fixed(m), Dim::Fixed(k)]);
    let w = b.const_i8("w_int8", &[k, n], &vec![127i8; k * n]);
    let scale = b.const_f32(&[n], &vec![1.0 / 127.0; n]);
    let zero = b.const_i8("w_zero_point", &[n], &vec![0i8; n]);
    let bias = b.const_f32(&[n], &vec![0.0; n]);
    let y = b.ms_op(
        "DynamicQuantizeMatMul",
        &["x", &w, &scale, &zero, &bias],
        &[],
    );
    b.op_named("Identity", &[&y], &[], "y");
    b.output("y", data_type::FLOAT, &[Dim::Fixed(m), Dim::Fixed(n)]);
    SaturationProbe {
        graph: b.finish("int8 kernel saturation probe", &[]),
        dims: [m, k],
        input: vec![1.0; m * k],
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
    fn the_probe_verdict_is_full_only_for_exact_sums() {
        let n = SaturationProbe::M * SaturationProbe::N;
        let k = SaturationProbe::K as f32;
        assert_eq!(SaturationProbe::verdict(&vec![k; n]), Int8Weights::Full);
        // A saturated pair sum: 32 767 instead of 2 · 255 · 127 = 64 770.
        let saturated = k * 32767.0 / 64770.0;
        assert_eq!(
            SaturationProbe::verdict(&vec![saturated; n]),
            Int8Weights::Reduced
        );
        let mut one_off = vec![k; n];
        one_off[n - 1] = saturated;
        assert_eq!(SaturationProbe::verdict(&one_off), Int8Weights::Reduced);
        assert_eq!(
            SaturationProbe::verdict(&vec![k; n - 1]),
            Int8Weights::Reduced
        );
        assert_eq!(
            SaturationProbe::verdict(&vec![f32::NAN; n]),
            Int8Weights::Reduced
        );
        let probe = saturation_probe();
        assert_eq!(probe.input.len(), probe.dims[0] * probe.dims[1]);
        assert!(!probe.graph.is_empty());
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
}
