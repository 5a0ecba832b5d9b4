//! OWLv2 architecture and preprocessing settings read from a Hugging Face model directory
//! (`config.json`, `preprocessor_config.json`).
//!
//! Every size comes from these files; missing keys take transformers' `Owlv2*Config` defaults.
//! This module knows nothing about weights, ONNX or inference.

use serde::Deserialize;
use std::path::Path;

use super::error::ModelError;

/// One transformer tower (vision or text).
#[derive(Debug, Clone, PartialEq)]
pub struct TowerConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub layer_norm_eps: f32,
}

impl TowerConfig {
    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// The whole detector's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct OwlConfig {
    pub vision: TowerConfig,
    pub text: TowerConfig,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub vocab_size: usize,
    /// Text sequence length (`max_position_embeddings`, 16 for OWLv2).
    pub text_len: usize,
    pub projection_dim: usize,
    /// Preprocessing: per-channel mean and std, rescale factor.
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f32,
}

impl OwlConfig {
    /// Patches per side.
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Number of patch tokens (`grid²`), the number of predicted boxes per image.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
    /// Width of the class embeddings and query embeddings.
    pub fn class_dim(&self) -> usize {
        self.text.hidden_size
    }

    /// Reads `config.json` and `preprocessor_config.json` from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        let raw: RawConfig = read_json(&dir.join("config.json"))?;
        let pre_path = dir.join("preprocessor_config.json");
        let pre: RawPreprocessor = read_json(&pre_path)?;
        Self::from_raw(raw, pre)
    }

    fn from_raw(raw: RawConfig, pre: RawPreprocessor) -> Result<Self, ModelError> {
        let v = raw.vision_config.unwrap_or_default();
        let t = raw.text_config.unwrap_or_default();
        for act in [&v.hidden_act, &t.hidden_act].into_iter().flatten() {
            if act != "quick_gelu" {
                return Err(ModelError::Config(format!(
                    "unsupported hidden_act {act:?} (OWLv2 uses quick_gelu)"
                )));
            }
        }
        let vision = TowerConfig {
            hidden_size: v.hidden_size.unwrap_or(768),
            intermediate_size: v.intermediate_size.unwrap_or(3072),
            num_layers: v.num_hidden_layers.unwrap_or(12),
            num_heads: v.num_attention_heads.unwrap_or(12),
            layer_norm_eps: v.layer_norm_eps.unwrap_or(1e-5),
        };
        let text = TowerConfig {
            hidden_size: t.hidden_size.unwrap_or(512),
            intermediate_size: t.intermediate_size.unwrap_or(2048),
            num_layers: t.num_hidden_layers.unwrap_or(12),
            num_heads: t.num_attention_heads.unwrap_or(8),
            layer_norm_eps: t.layer_norm_eps.unwrap_or(1e-5),
        };
        let image_size = v.image_size.unwrap_or(768);
        let patch_size = v.patch_size.unwrap_or(16);
        let cfg = OwlConfig {
            vision,
            text,
            image_size,
            patch_size,
            num_channels: v.num_channels.unwrap_or(3),
            vocab_size: t.vocab_size.unwrap_or(49408),
            text_len: t.max_position_embeddings.unwrap_or(16),
            projection_dim: raw.projection_dim.unwrap_or(512),
            image_mean: pre
                .image_mean
                .unwrap_or([0.481_454_66, 0.457_827_5, 0.408_210_73]),
            image_std: pre
                .image_std
                .unwrap_or([0.268_629_54, 0.261_302_6, 0.275_777_1]),
            rescale_factor: pre.rescale_factor.unwrap_or(1.0 / 255.0),
        };
        if let Some(size) = pre.size {
            let (h, w) = size.dims();
            if h != Some(image_size) || w != Some(image_size) {
                return Err(ModelError::Config(format!(
                    "preprocessor_config.json size {h:?}x{w:?} differs from the vision image_size {image_size}"
                )));
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        for (name, tw) in [("vision", &self.vision), ("text", &self.text)] {
            if tw.hidden_size == 0 || tw.num_heads == 0 || tw.num_layers == 0 {
                return bad(format!("{name} tower has a zero size"));
            }
            if tw.hidden_size % tw.num_heads != 0 {
                return bad(format!(
                    "{name} hidden_size {} is not divisible by num_attention_heads {}",
                    tw.hidden_size, tw.num_heads
                ));
            }
        }
        if self.patch_size == 0 || !self.image_size.is_multiple_of(self.patch_size) {
            return bad(format!(
                "image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            ));
        }
        if self.num_channels != 3 {
            return bad(format!("num_channels {} is not 3", self.num_channels));
        }
        if self.projection_dim != self.text.hidden_size {
            return bad(format!(
                "projection_dim {} differs from the text hidden_size {}: the class head cannot compare them",
                self.projection_dim, self.text.hidden_size
            ));
        }
        if self.text_len < 3 {
            return bad(format!(
                "max_position_embeddings {} is too small",
                self.text_len
            ));
        }
        if self.image_std.contains(&0.0) {
            return bad("image_std has a zero".into());
        }
        Ok(())
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ModelError> {
    let bytes = std::fs::read(path).map_err(|e| ModelError::io(path, e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))
}

#[derive(Deserialize, Default)]
struct RawTower {
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    layer_norm_eps: Option<f32>,
    hidden_act: Option<String>,
    image_size: Option<usize>,
    patch_size: Option<usize>,
    num_channels: Option<usize>,
    vocab_size: Option<usize>,
    max_position_embeddings: Option<usize>,
}

#[derive(Deserialize)]
struct RawConfig {
    text_config: Option<RawTower>,
    vision_config: Option<RawTower>,
    projection_dim: Option<usize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Square(usize),
    Map {
        height: Option<usize>,
        width: Option<usize>,
    },
}

impl RawSize {
    fn dims(&self) -> (Option<usize>, Option<usize>) {
        match self {
            RawSize::Square(s) => (Some(*s), Some(*s)),
            RawSize::Map { height, width } => (*height, *width),
        }
    }
}

#[derive(Deserialize)]
struct RawPreprocessor {
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
    rescale_factor: Option<f32>,
    size: Option<RawSize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(cfg: &str, pre: &str) -> Result<OwlConfig, ModelError> {
        OwlConfig::from_raw(
            serde_json::from_str(cfg).expect("cfg json"),
            serde_json::from_str(pre).expect("pre json"),
        )
    }

    #[test]
    fn defaults_are_base_text_and_read_vision_sizes() {
        let c = parse(
            r#"{"vision_config": {"image_size": 960}}"#,
            r#"{"size": {"height": 960, "width": 960}}"#,
        )
        .expect("valid");
        assert_eq!(c.grid(), 60);
        assert_eq!(c.num_patches(), 3600);
        assert_eq!(c.vision.head_dim(), 64);
        assert_eq!(c.text.head_dim(), 64);
        assert_eq!(c.class_dim(), 512);
    }

    #[test]
    fn mismatched_preprocessor_size_is_an_error() {
        let e = parse(
            r#"{"vision_config": {"image_size": 960}}"#,
            r#"{"size": 768}"#,
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("768"), "{e}");
    }

    #[test]
    fn indivisible_heads_are_an_error() {
        let e = parse(
            r#"{"vision_config": {"image_size": 960, "hidden_size": 100, "num_attention_heads": 3}}"#,
            r#"{}"#,
        )
        .expect_err("must fail");
        assert!(e.to_string().contains("divisible"), "{e}");
    }
}
