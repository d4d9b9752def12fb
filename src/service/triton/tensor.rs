//! Tensors as both transports hand them over, decoded once: request inputs
//! (raw little-endian bytes, typed protobuf contents or JSON numbers) and
//! response outputs. Only FP32 carries GRU data; INT32/INT64 are read for
//! `SEQUENCE_LENGTH`; any other type is kept as its name, to be refused by
//! the input it was sent for.

use std::borrow::Cow;
use std::sync::Arc;

use super::error::TritonError;
use crate::engine::StepOutcome;

/// A request parameter (`InferParameter` / a JSON value).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Bool(bool),
    Int(i64),
    UInt(u64),
    Double(f64),
    Str(String),
}

/// The values of one input.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    Int(Vec<i64>),
    /// A datatype the adapter does not read (named in the refusal).
    Unsupported,
}

impl Data {
    pub fn count(&self) -> Option<usize> {
        match self {
            Data::F32(v) => Some(v.len()),
            Data::Int(v) => Some(v.len()),
            Data::Unsupported => None,
        }
    }
}

/// A tensor's, datatype's or parameter's name: the protocol's own names
/// are static (no allocation per request), others are kept as sent.
pub type Name = Cow<'static, str>;

/// The names requests carry on every call.
const KNOWN: [&str; 14] = [
    super::model::INPUT,
    super::model::STATE_IN,
    super::model::SEQUENCE_LENGTH,
    super::model::OUTPUT,
    super::model::STATE_OUT,
    "FP32",
    "INT32",
    "INT64",
    "sequence_id",
    "sequence_start",
    "sequence_end",
    "sequence_step",
    "priority",
    "timeout",
];

/// The protocol's own name spelled by `b`, if it is one.
pub fn known(b: &[u8]) -> Option<&'static str> {
    KNOWN.iter().find(|k| k.as_bytes() == b).copied()
}

#[derive(Debug, Clone)]
pub struct InTensor {
    pub name: Name,
    pub datatype: Name,
    pub shape: Vec<i64>,
    pub data: Data,
}

/// One output of a response: FP32, row-major. Every output of the adapter
/// is three-dimensional ([batch, T, O] or [batch, layers, hidden]).
#[derive(Debug, Clone)]
pub struct OutTensor {
    pub name: &'static str,
    pub shape: [i64; 3],
    pub data: Floats,
}

/// An output's values: a step's are read in place from the engine's
/// outcome (shared with the session's kept reply), not copied.
#[derive(Debug, Clone)]
pub enum Floats {
    Owned(Vec<f32>),
    Outputs(Arc<StepOutcome>),
    State(Arc<StepOutcome>),
}

impl Floats {
    pub fn as_slice(&self) -> &[f32] {
        match self {
            Floats::Owned(v) => v,
            Floats::Outputs(o) => &o.outputs,
            Floats::State(o) => &o.state,
        }
    }
}

impl OutTensor {
    /// Little-endian bytes (`raw_output_contents`, HTTP binary data).
    pub fn raw(&self) -> Vec<u8> {
        let data = self.data.as_slice();
        // Sized once and filled in place (vectorised; no growth checks).
        let mut out = vec![0u8; data.len() * 4];
        for (b, v) in out.chunks_exact_mut(4).zip(data) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// Elements a shape holds; None when a dimension is negative or it overflows.
pub fn elements(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| {
        usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
    })
}

/// Bytes per element of the datatypes read from raw bytes.
fn width(datatype: &str) -> Option<usize> {
    match datatype {
        "FP32" | "INT32" => Some(4),
        "INT64" => Some(8),
        _ => None,
    }
}

/// Decodes raw little-endian bytes of `datatype` (row-major, unpadded).
pub fn decode_raw(
    name: &str,
    datatype: &str,
    shape: &[i64],
    bytes: &[u8],
) -> Result<Data, TritonError> {
    let Some(w) = width(datatype) else {
        return Ok(Data::Unsupported);
    };
    let n = elements(shape).ok_or_else(|| bad_shape(name, shape))?;
    if Some(bytes.len()) != n.checked_mul(w) {
        return Err(TritonError::invalid(format!(
            "input '{name}': shape {shape:?} of {datatype} needs {} bytes, got {}",
            n.saturating_mul(w),
            bytes.len()
        )));
    }
    Ok(match datatype {
        "FP32" => Data::F32(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        "INT32" => Data::Int(
            bytes
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                .collect(),
        ),
        _ => Data::Int(
            bytes
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                .collect(),
        ),
    })
}

pub fn bad_shape(name: &str, shape: &[i64]) -> TritonError {
    TritonError::invalid(format!(
        "input '{name}': shape {shape:?} has a negative dimension or is too large"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_decode_little_endian_and_sizes_are_checked() {
        let mut b = Vec::new();
        for v in [1.5f32, -2.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(
            decode_raw("INPUT", "FP32", &[1, 2], &b).unwrap(),
            Data::F32(vec![1.5, -2.0])
        );
        let e = decode_raw("INPUT", "FP32", &[1, 3], &b).unwrap_err();
        assert!(e.message.contains("needs 12 bytes, got 8"), "{e}");
        assert_eq!(
            decode_raw("L", "INT32", &[2], &[3, 0, 0, 0, 255, 255, 255, 255]).unwrap(),
            Data::Int(vec![3, -1])
        );
        assert_eq!(
            decode_raw("X", "FP16", &[1], &[0, 0]).unwrap(),
            Data::Unsupported
        );
        assert!(decode_raw("X", "FP32", &[-1], &[]).is_err());
        let out = OutTensor {
            name: "OUTPUT",
            shape: [1, 1, 2],
            data: Floats::Owned(vec![1.5, -2.0]),
        };
        assert_eq!(
            out.raw(),
            [1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat()
        );
    }
}
