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
}
