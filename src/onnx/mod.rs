//! Writing ONNX models from Rust: the protobuf schema subset (`proto`) and a small graph builder
//! (`builder`). Knows nothing about OWLv2; `crate::model::graphs` uses it to build the towers.

pub(crate) mod builder;
pub(crate) mod embed;
pub(crate) mod proto;

pub(crate) use builder::{Attr, GraphBuilder, WeightData};
