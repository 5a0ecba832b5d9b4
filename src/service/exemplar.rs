//! An example image as a client sends it: the request's and the query sets' common part.

use bytes::Bytes;

/// An example image used as a query (query by example), as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExemplarInput {
    /// The encoded image (JPEG, PNG, WebP, BMP).
    pub image: Bytes,
    /// `[x0, y0, x1, y1]` in the exemplar's pixels: the object there is the query; `None`: the
    /// exemplar's most object-like patch.
    pub bbox: Option<[f32; 4]>,
    /// Positive: label of its detections (default `image:<n>`, n counting the request's
    /// exemplars from 0, after those of its query set). Negative: the query it vetoes (default:
    /// every query).
    pub label: Option<String>,
    /// A counter-example: matches that look at least as much like it as like their query are
    /// dropped (`postprocess::vetoed_predictions`).
    pub negative: bool,
}
