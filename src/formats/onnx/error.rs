//! Why an ONNX file could not be imported.

use std::path::PathBuf;

use super::is_default_domain;

/// Why an ONNX file could not be imported. Messages name what was found
/// (node, op, tensor, shapes, attribute values) so that a user can fix the
/// export without reading this code.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read.
    #[error("cannot read ONNX file '{}': {source}", .path.display())]
    Io {
        /// The file that was being read.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not a protobuf-encoded `ModelProto` (or are truncated).
    #[error("not a valid ONNX model (corrupt, truncated or not an .onnx file): {0}")]
    Decode(#[from] prost::DecodeError),
    /// The model has no `graph`.
    #[error("the ONNX model has no graph")]
    NoGraph,
    /// The model imports no version of the default ONNX operator set.
    #[error("the ONNX model imports no opset for the default domain (\"\" or \"ai.onnx\"); opset_import has: {found}")]
    NoOpset {
        /// The domains/versions that were imported, for the message.
        found: String,
    },
    /// A node whose op gru-serve does not import.
    #[error("unsupported op '{op_type}'{} (node '{node}'); gru-serve imports graphs of GRU nodes, shape ops and an optional MatMul+Add/Gemm head", domain_note(.domain))]
    UnsupportedOp {
        /// The node's name (or a positional label when unnamed).
        node: String,
        /// The node's op_type.
        op_type: String,
        /// The node's domain (empty for the default domain).
        domain: String,
    },
    /// The graph contains no GRU node at all.
    #[error("the graph has no GRU node (ops found: {ops}); gru-serve imports graphs of GRU nodes, shape ops and an optional MatMul+Add/Gemm head")]
    NoGruNode {
        /// The op types present, for the message.
        ops: String,
    },
    /// A GRU direction other than forward.
    #[error(
        "GRU node '{node}' has direction '{direction}'; only direction 'forward' is supported"
    )]
    Direction {
        /// The GRU node.
        node: String,
        /// The direction attribute as found.
        direction: String,
    },
    /// An attribute that is missing, malformed, or changes the semantics in a
    /// way gru-serve does not implement (clip, custom activations, ...).
    #[error("{op} node '{node}': attribute '{attribute}' {problem}")]
    Attribute {
        /// The node's op_type.
        op: String,
        /// The node.
        node: String,
        /// The attribute name.
        attribute: String,
        /// What is wrong, including the value found.
        problem: String,
    },
    /// A node input that must be a constant tensor is computed at run time.
    #[error(
        "'{value}' ({role}) must be an initializer or the output of a Constant node, but {found}"
    )]
    NotConstant {
        /// Which input this is, e.g. "input W of GRU node 'gru0'".
        role: String,
        /// The value name.
        value: String,
        /// What it actually is.
        found: String,
    },
    /// A tensor of a type other than FLOAT.
    #[error(
        "tensor '{tensor}' has data type {data_type}; only FLOAT (float32) tensors are supported"
    )]
    TensorType {
        /// The tensor name.
        tensor: String,
        /// The data type found, by ONNX name (or number when unknown).
        data_type: String,
    },
    /// A tensor whose data lives outside the .onnx file.
    #[error("tensor '{tensor}' is stored as external data; external data is not supported; re-save with all tensors inside the file")]
    ExternalData {
        /// The tensor name.
        tensor: String,
    },
    /// A tensor whose element count disagrees with its dims.
    #[error("tensor '{tensor}' has dims {dims:?} ({expected} elements) but holds {found} elements{detail}")]
    TensorSize {
        /// The tensor name.
        tensor: String,
        /// The declared dims.
        dims: Vec<i64>,
        /// The element count the dims imply.
        expected: u64,
        /// The element count actually stored.
        found: u64,
        /// Extra detail (e.g. raw byte length), possibly empty.
        detail: String,
    },
    /// A weight tensor with the wrong shape.
    #[error("tensor '{tensor}' ({role}) has shape {found:?}, expected {expected}")]
    Shape {
        /// Which tensor this is, e.g. "W of GRU node 'gru0'".
        role: String,
        /// The tensor name.
        tensor: String,
        /// The expected shape, spelled out (may contain symbols).
        expected: String,
        /// The shape found.
        found: Vec<i64>,
    },
    /// The GRU nodes do not form one chain, bottom to top.
    #[error("GRU node '{node}' is not part of a single chain of GRU layers: {problem}")]
    Chain {
        /// The GRU node whose input is wrong.
        node: String,
        /// What was found instead.
        problem: String,
    },
    /// A GRU `sequence_lens` or `initial_h` input that is a constant the
    /// imported arrays could not carry.
    #[error("GRU node '{node}': input {input} {problem}")]
    StateInput {
        /// The GRU node.
        node: String,
        /// Which input, e.g. "initial_h (input 5)".
        input: String,
        /// What is wrong, naming the value found.
        problem: String,
    },
    /// Something about the linear head (or an op where only a head may be).
    #[error("{problem}")]
    Head {
        /// The full explanation.
        problem: String,
    },
    /// The graph is structurally invalid as ONNX (missing inputs, values
    /// produced twice, undefined values, cycles).
    #[error("malformed ONNX graph: {0}")]
    Malformed(String),
}

pub(super) fn domain_note(domain: &str) -> String {
    if is_default_domain(domain) {
        String::new()
    } else {
        format!(" in domain '{domain}'")
    }
}
