//! Query planning: exemplar images (query by example) and how a request's text and image queries
//! lay out into one `QueryPlan`, checked once, shared by the service, the worker and the CLI.

use std::sync::Arc;

use super::error::PipelineError;
use crate::postprocess;
use crate::preprocess::Rgb;

/// An example image used as a query (query by example).
#[derive(Debug, Clone)]
pub struct Exemplar<'a> {
    /// Identifies the image's content (e.g. a hash of its encoded bytes): the embedding cache key,
    /// with the box.
    pub content_key: &'a str,
    pub image: &'a Rgb,
    /// `[x0, y0, x1, y1]` in the exemplar's pixels: the query is the object there; `None`: the
    /// exemplar's most object-like patch (transformers' `embed_image_query`).
    pub bbox: Option<[f32; 4]>,
}

impl Exemplar<'_> {
    /// The content key of an exemplar's encoded bytes (SHA-256, hex): what the CLI and the
    /// service pass as `content_key`.
    pub fn content_key(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(bytes))
    }

    /// The label of the request's `n`-th exemplar when the client names none.
    pub fn default_label(n: usize) -> String {
        format!("image:{n}")
    }

    /// The embedding cache key: never equal to a text query (those have no NUL).
    pub fn cache_key(&self) -> String {
        Self::key_of(self.content_key, self.bbox)
    }

    /// The embedding cache key of an exemplar with this content key and box.
    pub fn key_of(content_key: &str, bbox: Option<[f32; 4]>) -> String {
        match bbox {
            Some(b) => format!(
                "\0image:{}#{},{},{},{}",
                content_key, b[0], b[1], b[2], b[3]
            ),
            None => format!("\0image:{content_key}"),
        }
    }

    /// Its box, normalised (`normalised_box`).
    pub fn normalised_box(&self) -> Result<Option<[f32; 4]>, PipelineError> {
        normalised_box(self.bbox, self.image.width, self.image.height)
    }
}

/// An exemplar box divided by `max(H, W)` of its `width`×`height` image (the padded square the
/// boxes are predicted in), after checking it is a non-empty box inside the image.
pub fn normalised_box(
    bbox: Option<[f32; 4]>,
    width: u32,
    height: u32,
) -> Result<Option<[f32; 4]>, PipelineError> {
    let Some(b) = bbox else { return Ok(None) };
    let (w, h) = (width as f32, height as f32);
    let finite = b.iter().all(|v| v.is_finite());
    if !finite || b[0] < 0.0 || b[1] < 0.0 || b[2] > w || b[3] > h {
        return Err(PipelineError::Exemplar(format!(
            "exemplar box {b:?} is outside the {width}x{height} image"
        )));
    }
    if b[2] <= b[0] || b[3] <= b[1] {
        return Err(PipelineError::Exemplar(format!(
            "exemplar box {b:?} is empty (it needs x0 < x1 and y0 < y1)"
        )));
    }
    let side = w.max(h);
    Ok(Some([b[0] / side, b[1] / side, b[2] / side, b[3] / side]))
}

/// What one exemplar of a request is, by its label and sign (`ExemplarRole`s come from
/// `plan_exemplars`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExemplarRole {
    /// Averaged into the query with this index (counting the text queries first).
    Positive(usize),
    /// Vetoes the queries with the label of this index (the first of them), or every query
    /// (`None`).
    Negative(Option<usize>),
}

/// An exemplar's label and sign, as a request gives them.
#[derive(Debug, Clone, Copy)]
pub struct ExemplarSpec<'a> {
    /// `None` only for a negative that applies to every query.
    pub label: Option<&'a str>,
    pub negative: bool,
}

/// Where an exemplar's query embedding comes from.
#[derive(Debug, Clone)]
pub enum ExemplarSource<'a> {
    /// Its image: embedded by [`super::Detector::plan`] (from the cache, or an image-graph pass).
    Image(Exemplar<'a>),
    /// Already embedded (found in the cache before the request was queued).
    Embedded(Arc<[f32]>),
}

/// One exemplar of a request, for [`super::Detector::plan`].
#[derive(Debug, Clone)]
pub struct PlannedExemplar<'a> {
    pub spec: ExemplarSpec<'a>,
    pub source: ExemplarSource<'a>,
}

/// Lays out a request's queries: the text queries keep their indices and labels; positive
/// exemplars sharing a label form one query each (in the order of first appearance), averaged;
/// a negative with a label vetoes the query of that label, without one every query. Returns each
/// exemplar's role and the labels of all queries. Refused: a positive exemplar labelled like a
/// text query (text and image queries are not mixed into one), a positive without label, a
/// negative whose label names no query, and negatives alone.
pub fn plan_exemplars(
    text: &[String],
    exemplars: &[ExemplarSpec<'_>],
) -> Result<(Vec<ExemplarRole>, Vec<String>), PipelineError> {
    let mut labels: Vec<String> = text.to_vec();
    let mut roles = Vec::with_capacity(exemplars.len());
    for (n, e) in exemplars.iter().enumerate() {
        if e.negative {
            roles.push(ExemplarRole::Negative(None));
            continue;
        }
        let Some(l) = e.label else {
            return Err(PipelineError::Exemplar(format!(
                "query image {n} has no label"
            )));
        };
        if text.iter().any(|t| t == l) {
            return Err(PipelineError::Exemplar(format!(
                "query image {n}: label {l:?} is also a text query (use another label, or a \
                 negative exemplar to refine the text query)"
            )));
        }
        let q = match labels[text.len()..].iter().position(|x| x == l) {
            Some(i) => text.len() + i,
            None => {
                labels.push(l.to_string());
                labels.len() - 1
            }
        };
        roles.push(ExemplarRole::Positive(q));
    }
    for (n, e) in exemplars.iter().enumerate() {
        if let (true, Some(l)) = (e.negative, e.label) {
            let Some(q) = labels.iter().position(|x| x == l) else {
                return Err(PipelineError::Exemplar(format!(
                    "negative query image {n}: label {l:?} names no query of the request"
                )));
            };
            roles[n] = ExemplarRole::Negative(Some(q));
        }
    }
    if labels.is_empty() {
        return Err(PipelineError::Exemplar(
            "negative query images need a query to refine (a text query or a positive query image)"
                .into(),
        ));
    }
    Ok((roles, labels))
}

/// The queries of a detection as embeddings: one per label, and the negatives with the query each
/// vetoes (`None`: every query).
#[derive(Debug, Clone, Default)]
pub struct QueryPlan {
    pub embeddings: Vec<Arc<[f32]>>,
    pub labels: Vec<String>,
    pub negatives: Vec<(Arc<[f32]>, Option<usize>)>,
}

impl QueryPlan {
    /// Text queries only: each its own label.
    pub fn text(queries: &[String], embeddings: Vec<Arc<[f32]>>) -> Self {
        QueryPlan {
            embeddings,
            labels: queries.to_vec(),
            negatives: Vec::new(),
        }
    }

    /// Text queries with their embeddings, then exemplars with theirs, laid out by
    /// `plan_exemplars`: exemplars of one label averaged (`postprocess::average_embedding`).
    pub fn build(
        text: &[String],
        text_embeddings: Vec<Arc<[f32]>>,
        exemplars: &[ExemplarSpec<'_>],
        exemplar_embeddings: &[Arc<[f32]>],
    ) -> Result<Self, PipelineError> {
        let (roles, labels) = plan_exemplars(text, exemplars)?;
        let mut embeddings = text_embeddings;
        let mut negatives = Vec::new();
        for q in text.len()..labels.len() {
            let members: Vec<&[f32]> = roles
                .iter()
                .zip(exemplar_embeddings)
                .filter(|(r, _)| **r == ExemplarRole::Positive(q))
                .map(|(_, e)| &e[..])
                .collect();
            embeddings.push(Arc::from(postprocess::average_embedding(&members)));
        }
        for (r, e) in roles.iter().zip(exemplar_embeddings) {
            match r {
                // Every query of that label (text queries may repeat one).
                ExemplarRole::Negative(Some(q)) => {
                    for (i, l) in labels.iter().enumerate() {
                        if *l == labels[*q] {
                            negatives.push((e.clone(), Some(i)));
                        }
                    }
                }
                ExemplarRole::Negative(None) => negatives.push((e.clone(), None)),
                ExemplarRole::Positive(_) => {}
            }
        }
        Ok(QueryPlan {
            embeddings,
            labels,
            negatives,
        })
    }
}
