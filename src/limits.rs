//! The request limits every layer shares: what a list of text queries and an encoded image may
//! be, and what a saved resource may be named. Plain data at the bottom of the crate (configuration builds them, the tokenizer and the
//! image decoder enforce them); imports nothing of the crate.

/// Maximum accepted query length in bytes before tokenization (guards the tokenizer).
pub const MAX_QUERY_BYTES: usize = 4096;

/// The rules a list of text queries must follow before anything is tokenized or run: at least one
/// query, at most `max_queries`, each at most `max_query_bytes` long, not blank and without control
/// characters. The one place
/// these rules live; the service checks them at admission, `detect` before loading anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryRules {
    pub max_queries: usize,
    pub max_query_bytes: usize,
}

impl Default for QueryRules {
    /// The daemon's defaults (`max_queries`, `max_query_bytes`).
    fn default() -> Self {
        QueryRules {
            max_queries: 64,
            max_query_bytes: 1024,
        }
    }
}

/// Explicit limits on an encoded image, checked from its header before any pixel is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageLimits {
    /// Largest encoded image in bytes.
    pub max_encoded_bytes: usize,
    /// Largest `width × height`.
    pub max_pixels: u64,
    /// Largest width or height.
    pub max_side: u32,
    /// Rotate/flip by the EXIF orientation tag (JPEG, PNG, WebP) before preprocessing. Off by
    /// default: transformers' processors take the pixels as stored.
    pub apply_exif_orientation: bool,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_encoded_bytes: 32 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_side: 16_384,
            apply_exif_orientation: false,
        }
    }
}

/// Whether `name` is a valid name for a saved resource (query sets, streams): 1 to 64 of `a-z`,
/// `0-9`, `_` and `-`.
pub(crate) fn is_valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}
