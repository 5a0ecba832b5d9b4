//! CLIP BPE tokenization of text queries into fixed-length `input_ids` rows.
//!
//! Loads `tokenizer.json` when present, otherwise builds the same pipeline from `vocab.json` +
//! `merges.txt` (NFC, whitespace collapse, lowercase, CLIP split regex, byte-level BPE with `</w>`,
//! `[BOS] … [EOS]`, and `!` as the special pad token with id 0, as transformers' `CLIPTokenizer`
//! registers it). Padding (id 0) and truncation are always forced to the model's text length:
//! queries longer than `len − 2` tokens are truncated to that many tokens plus EOS (transformers
//! itself crashes on them). Empty queries are rejected.

pub use crate::limits::{QueryRules, MAX_QUERY_BYTES};
use std::path::Path;

use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::error::ModelError;

/// The tokenizer pipeline of `tokenizer.json` files of OWLv2 checkpoints, with an empty vocabulary;
/// filled from `vocab.json` + `merges.txt` when a checkpoint ships those instead.
const TEMPLATE: &str = r#"{
  "version": "1.0",
  "truncation": null,
  "padding": null,
  "added_tokens": [
    {"id": 0, "content": "!", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 49406, "content": "<|startoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
    {"id": 49407, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}
  ],
  "normalizer": {"type": "Sequence", "normalizers": [
    {"type": "NFC"},
    {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
    {"type": "Lowercase"}
  ]},
  "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"}, "behavior": "Removed", "invert": true},
    {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
  ]},
  "post_processor": {"type": "RobertaProcessing", "sep": ["<|endoftext|>", 49407], "cls": ["<|startoftext|>", 49406], "trim_offsets": false, "add_prefix_space": false},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
  "model": {"type": "BPE", "dropout": null, "unk_token": "<|endoftext|>", "continuing_subword_prefix": "", "end_of_word_suffix": "</w>", "fuse_unk": false, "byte_fallback": false, "ignore_merges": false, "vocab": {}, "merges": []}
}"#;

/// Bad queries: the request-level rules of `QueryRules` and the tokenizer's own refusals.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum QueryError {
    #[error("at least one query is required")]
    Missing,
    #[error("{count} queries given, at most {max} allowed")]
    TooMany { count: usize, max: usize },
    #[error("query {index} is empty")]
    Empty { index: usize },
    #[error("query {index} is {len} bytes long (at most {max})")]
    TooLong {
        index: usize,
        len: usize,
        max: usize,
    },
    #[error("query {index} contains control characters")]
    Control { index: usize },
    #[error("query {index} could not be tokenized: {message}")]
    Tokenize { index: usize, message: String },
}

impl QueryError {
    /// Stable snake_case name for APIs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::Missing => "missing_query",
            QueryError::TooMany { .. } => "too_many_queries",
            _ => "invalid_query",
        }
    }
}

impl QueryRules {
    /// Checks `queries` in order: the count first, then each query.
    pub fn check(&self, queries: &[String]) -> Result<(), QueryError> {
        if queries.is_empty() {
            return Err(QueryError::Missing);
        }
        if queries.len() > self.max_queries {
            return Err(QueryError::TooMany {
                count: queries.len(),
                max: self.max_queries,
            });
        }
        for (index, q) in queries.iter().enumerate() {
            self.check_text(index, q)?;
        }
        Ok(())
    }

    /// Checks one query's text (the `index`-th): at most `max_query_bytes`, not blank, no control
    /// characters. Also the rule for exemplar labels, which are shown like queries.
    pub fn check_text(&self, index: usize, q: &str) -> Result<(), QueryError> {
        if q.len() > self.max_query_bytes {
            return Err(QueryError::TooLong {
                index,
                len: q.len(),
                max: self.max_query_bytes,
            });
        }
        if q.trim().is_empty() {
            return Err(QueryError::Empty { index });
        }
        // Never part of a phrase; a NUL would also reach the embedding cache's exemplar keys.
        if q.chars().any(char::is_control) {
            return Err(QueryError::Control { index });
        }
        Ok(())
    }
}

/// Result of tokenizing one query.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedQuery {
    pub ids: Vec<i64>,
    /// Whether tokens were dropped to fit the text length.
    pub truncated: bool,
}

/// A CLIP tokenizer fixed to one text length.
pub struct QueryTokenizer {
    inner: Tokenizer,
    len: usize,
}

impl std::fmt::Debug for QueryTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryTokenizer")
            .field("len", &self.len)
            .finish()
    }
}

impl QueryTokenizer {
    /// Loads the tokenizer of a model directory for rows of `len` ids.
    pub fn from_dir(dir: &Path, len: usize) -> Result<Self, ModelError> {
        let json = dir.join("tokenizer.json");
        let inner = if json.is_file() {
            Tokenizer::from_file(&json)
                .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", json.display())))?
        } else {
            let vocab = dir.join("vocab.json");
            let merges = dir.join("merges.txt");
            if !vocab.is_file() || !merges.is_file() {
                return Err(ModelError::Tokenizer(format!(
                    "{} has neither tokenizer.json nor vocab.json + merges.txt",
                    dir.display()
                )));
            }
            Self::from_vocab_merges(&vocab, &merges)?
        };
        Self::new(inner, len)
    }

    fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Tokenizer, ModelError> {
        let vocab_bytes = std::fs::read(vocab).map_err(|e| ModelError::io(vocab, e))?;
        let vocab_json: serde_json::Value = serde_json::from_slice(&vocab_bytes)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", vocab.display())))?;
        if !vocab_json.is_object() {
            return Err(ModelError::Tokenizer(format!(
                "{} is not a JSON object",
                vocab.display()
            )));
        }
        let merges_text = std::fs::read_to_string(merges).map_err(|e| ModelError::io(merges, e))?;
        let mut merge_list = Vec::new();
        for (n, line) in merges_text.lines().enumerate() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some(a), Some(b), None) => merge_list.push(serde_json::json!([a, b])),
                _ => {
                    return Err(ModelError::Tokenizer(format!(
                        "{} line {}: expected two symbols",
                        merges.display(),
                        n + 1
                    )))
                }
            }
        }
        let mut template: serde_json::Value = serde_json::from_str(TEMPLATE)
            .map_err(|e| ModelError::Tokenizer(format!("template: {e}")))?;
        template["model"]["vocab"] = vocab_json;
        template["model"]["merges"] = serde_json::Value::Array(merge_list);
        let text = template.to_string();
        text.parse::<Tokenizer>()
            .map_err(|e| ModelError::Tokenizer(format!("vocab.json + merges.txt: {e}")))
    }

    fn new(mut inner: Tokenizer, len: usize) -> Result<Self, ModelError> {
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: 0,
            pad_type_id: 0,
            pad_token: "!".into(),
        }));
        inner
            .with_truncation(Some(TruncationParams {
                max_length: len,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Tokenizer(format!("truncation: {e}")))?;
        Ok(QueryTokenizer { inner, len })
    }

    /// Ids per row.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false (a tokenizer has a positive row length); for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Tokenizes query number `index` into exactly `len()` ids.
    pub fn encode(&self, index: usize, text: &str) -> Result<TokenizedQuery, QueryError> {
        if text.len() > MAX_QUERY_BYTES {
            return Err(QueryError::TooLong {
                index,
                len: text.len(),
                max: MAX_QUERY_BYTES,
            });
        }
        if text.trim().is_empty() {
            return Err(QueryError::Empty { index });
        }
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| QueryError::Tokenize {
                index,
                message: e.to_string(),
            })?;
        let ids: Vec<i64> = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        // Only BOS and EOS are real: the text produced no tokens (e.g. only whitespace or controls).
        let real = enc.get_attention_mask().iter().filter(|&&m| m == 1).count();
        if real <= 2 {
            return Err(QueryError::Empty { index });
        }
        Ok(TokenizedQuery {
            truncated: !enc.get_overflowing().is_empty(),
            ids,
        })
    }
}
