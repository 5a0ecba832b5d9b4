//! A minimal ONNX graph builder: nodes with auto-named outputs, constants, and initializers that
//! either embed their data or point into an external file (safetensors checkpoint).

use prost::Message;

use super::proto::{
    attribute_type, data_type, AttributeProto, DimValue, Dimension, GraphProto, ModelProto,
    NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto, TensorShapeProto,
    TypeProto, TypeProtoTensor, ValueInfoProto, DATA_LOCATION_EXTERNAL,
};

/// ONNX opset of the default domain used by every graph we build (LayerNormalization needs 17).
pub(crate) const OPSET: i64 = 17;
/// IR version written into models (ONNX Runtime 1.31 reads up to 11; `docs/owlv2.md` asks ≤ 10).
pub(crate) const IR_VERSION: i64 = 8;
/// Microsoft contrib-op domain (fused attention).
pub(crate) const MS_DOMAIN: &str = "com.microsoft";

/// A node attribute.
#[derive(Debug, Clone)]
pub(crate) enum Attr {
    Int(&'static str, i64),
    Ints(&'static str, Vec<i64>),
    Float(&'static str, f32),
}

impl Attr {
    fn to_proto(&self) -> AttributeProto {
        match self {
            Attr::Int(n, v) => AttributeProto {
                name: (*n).into(),
                r#type: attribute_type::INT,
                i: *v,
                ..Default::default()
            },
            Attr::Ints(n, v) => AttributeProto {
                name: (*n).into(),
                r#type: attribute_type::INTS,
                ints: v.clone(),
                ..Default::default()
            },
            Attr::Float(n, v) => AttributeProto {
                name: (*n).into(),
                r#type: attribute_type::FLOAT,
                f: *v,
                ..Default::default()
            },
        }
    }
}

/// A graph input/output dimension.
#[derive(Debug, Clone)]
pub(crate) enum Dim {
    Fixed(usize),
    Named(&'static str),
}

/// Where the F32 bytes of a weight live.
#[derive(Debug, Clone)]
pub enum WeightData {
    /// F32 little-endian bytes stored in the checkpoint file at `offset..offset+length`.
    External {
        file_name: String,
        offset: u64,
        length: u64,
    },
    /// Converted F32 values (from F16/BF16).
    Owned(Vec<f32>),
}

/// Builds one ONNX graph.
#[derive(Debug, Default)]
pub(crate) struct GraphBuilder {
    graph: GraphProto,
    counter: usize,
    uses_ms_domain: bool,
}

impl GraphBuilder {
    pub(crate) fn new(name: &str) -> Self {
        GraphBuilder {
            graph: GraphProto {
                name: name.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{hint}_{}", self.counter)
    }

    /// Adds a node in the default domain with one output; returns the output name.
    pub(crate) fn op(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        let out = self.fresh(op);
        self.push(op, "", inputs, &[out.as_str()], attrs);
        out
    }

    /// Adds a node in the `com.microsoft` domain with one output.
    pub(crate) fn ms_op(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        self.uses_ms_domain = true;
        let out = self.fresh(op);
        self.push(op, MS_DOMAIN, inputs, &[out.as_str()], attrs);
        out
    }

    /// Adds a node whose single output has a chosen name (graph outputs).
    pub(crate) fn op_named(&mut self, op: &str, inputs: &[&str], attrs: &[Attr], out: &str) {
        self.push(op, "", inputs, &[out], attrs);
    }

    fn push(&mut self, op: &str, domain: &str, inputs: &[&str], outputs: &[&str], attrs: &[Attr]) {
        let name = format!("n{}_{op}", self.graph.node.len());
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name,
            op_type: op.into(),
            domain: domain.into(),
            attribute: attrs.iter().map(Attr::to_proto).collect(),
            doc_string: String::new(),
        });
    }

    /// An int64 constant initializer.
    pub(crate) fn const_i64(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const_i64");
        self.graph.initializer.push(TensorProto {
            dims: vec![values.len() as i64],
            data_type: data_type::INT64,
            int64_data: values.to_vec(),
            name: name.clone(),
            ..Default::default()
        });
        name
    }

    /// A float constant initializer with an explicit shape.
    pub(crate) fn const_f32(&mut self, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh("const_f32");
        self.tensor_f32(&name, dims, values);
        name
    }

    /// An int8 initializer (owned data, e.g. quantized weights).
    pub(crate) fn const_i8(&mut self, name: &str, dims: &[usize], values: &[i8]) -> String {
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: data_type::INT8,
            raw_data: values.iter().map(|v| *v as u8).collect(),
            name: name.into(),
            ..Default::default()
        });
        name.to_string()
    }

    /// A scalar float constant.
    pub(crate) fn scalar(&mut self, v: f32) -> String {
        self.const_f32(&[], &[v])
    }

    fn tensor_f32(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|d| *d as i64).collect(),
            data_type: data_type::FLOAT,
            raw_data: raw,
            name: name.into(),
            ..Default::default()
        });
    }

    /// A float weight initializer named `name`, embedded or pointing into an external file.
    pub(crate) fn weight(&mut self, name: &str, dims: &[usize], data: WeightData) -> String {
        match data {
            WeightData::Owned(v) => self.tensor_f32(name, dims, &v),
            WeightData::External {
                file_name,
                offset,
                length,
            } => {
                let kv = |k: &str, v: String| StringStringEntryProto {
                    key: k.into(),
                    value: v,
                };
                self.graph.initializer.push(TensorProto {
                    dims: dims.iter().map(|d| *d as i64).collect(),
                    data_type: data_type::FLOAT,
                    name: name.into(),
                    external_data: vec![
                        kv("location", file_name),
                        kv("offset", offset.to_string()),
                        kv("length", length.to_string()),
                    ],
                    data_location: DATA_LOCATION_EXTERNAL,
                    ..Default::default()
                });
            }
        }
        name.to_string()
    }

    /// Declares a graph input.
    pub(crate) fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.input.push(value_info(name, elem_type, dims));
    }

    /// Declares a graph output.
    pub(crate) fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem_type, dims));
    }

    /// Finishes the model and serialises it.
    pub(crate) fn finish(self, doc: &str, metadata: &[(&str, String)]) -> Vec<u8> {
        let mut opset_import = vec![OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }];
        if self.uses_ms_domain {
            opset_import.push(OperatorSetIdProto {
                domain: MS_DOMAIN.into(),
                version: 1,
            });
        }
        let model = ModelProto {
            ir_version: IR_VERSION,
            opset_import,
            producer_name: "intelligent-video".into(),
            producer_version: env!("CARGO_PKG_VERSION").into(),
            doc_string: doc.into(),
            graph: Some(self.graph),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: (*k).into(),
                    value: v.clone(),
                })
                .collect(),
            ..Default::default()
        };
        model.encode_to_vec()
    }
}

fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| Dimension {
                            value: Some(match d {
                                Dim::Fixed(v) => DimValue::DimValue(*v as i64),
                                Dim::Named(n) => DimValue::DimParam((*n).into()),
                            }),
                        })
                        .collect(),
                }),
            }),
        }),
    }
}
