//! Embedding a built graph's external weights: for readers that take a model from memory with no
//! folder to resolve `location` against (OpenVINO's ONNX reader). Only graphs this crate built
//! are read back (the `proto` subset models every field the builder writes).

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use prost::Message;

use super::proto::{ModelProto, DATA_LOCATION_EXTERNAL};

/// Why a graph's weights could not be embedded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EmbedError {
    #[error("the graph does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("initializer {name}: {message}")]
    Tensor { name: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// `graph` with every initializer that points into a file of `dir` holding its bytes instead. A
/// `location` must be a plain file name in `dir` (the builder writes the checkpoint's name).
pub(crate) fn embed_external(graph: &[u8], dir: &Path) -> Result<Vec<u8>, EmbedError> {
    let mut model = ModelProto::decode(graph)?;
    let mut files: HashMap<String, File> = HashMap::new();
    if let Some(g) = model.graph.as_mut() {
        for t in g
            .initializer
            .iter_mut()
            .filter(|t| t.data_location == DATA_LOCATION_EXTERNAL)
        {
            let bad = |message: String| EmbedError::Tensor {
                name: t.name.clone(),
                message,
            };
            let field = |k: &str| {
                t.external_data
                    .iter()
                    .find(|e| e.key == k)
                    .map(|e| e.value.clone())
            };
            let location = field("location").ok_or_else(|| bad("no location".into()))?;
            let number = |k: &str| -> Result<u64, EmbedError> {
                field(k)
                    .unwrap_or_else(|| "0".into())
                    .parse()
                    .map_err(|_| bad(format!("{k} is not a number")))
            };
            let (offset, length) = (number("offset")?, number("length")?);
            if location.is_empty() || location.contains('/') || location.starts_with('.') {
                return Err(bad(format!("location {location:?} is not a file name")));
            }
            let path = dir.join(&location);
            let io = |source| EmbedError::Io {
                path: path.display().to_string(),
                source,
            };
            if !files.contains_key(&location) {
                files.insert(location.clone(), File::open(&path).map_err(io)?);
            }
            let Some(f) = files.get_mut(&location) else {
                continue;
            };
            let len = usize::try_from(length).map_err(|_| bad("length too large".into()))?;
            let mut raw = vec![0u8; len];
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            f.read_exact(&mut raw).map_err(io)?;
            t.raw_data = raw;
            t.external_data.clear();
            t.data_location = 0;
        }
    }
    Ok(model.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::{data_type, GraphProto, StringStringEntryProto, TensorProto};

    fn model_with(location: &str, offset: u64, length: u64) -> Vec<u8> {
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        ModelProto {
            graph: Some(GraphProto {
                initializer: vec![TensorProto {
                    dims: vec![2],
                    data_type: data_type::FLOAT,
                    name: "w".into(),
                    external_data: vec![
                        kv("location", location.into()),
                        kv("offset", offset.to_string()),
                        kv("length", length.to_string()),
                    ],
                    data_location: DATA_LOCATION_EXTERNAL,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
        .encode_to_vec()
    }

    #[test]
    fn external_bytes_are_read_into_the_initializer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let values: Vec<u8> = [7.0f32, -1.5, 3.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(dir.path().join("w.bin"), &values).expect("write");
        let out = embed_external(&model_with("w.bin", 4, 8), dir.path()).expect("embeds");
        let m = ModelProto::decode(out.as_slice()).expect("decodes");
        let t = &m.graph.expect("graph").initializer[0];
        assert_eq!(t.raw_data, values[4..12].to_vec());
        assert!(t.external_data.is_empty());
        assert_eq!(t.data_location, 0);
    }

    #[test]
    fn paths_and_short_files_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("w.bin"), [0u8; 4]).expect("write");
        for loc in ["../w.bin", "/etc/passwd", "sub/w.bin", ""] {
            let e = embed_external(&model_with(loc, 0, 4), dir.path()).expect_err(loc);
            assert!(e.to_string().contains("is not a file name"), "{e}");
        }
        let e = embed_external(&model_with("w.bin", 0, 8), dir.path()).expect_err("short");
        assert!(matches!(e, EmbedError::Io { .. }), "{e}");
    }
}
