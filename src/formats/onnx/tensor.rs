//! Reading the float32 tensors of an ONNX graph into [`Array`]s.

use std::fmt;

use super::pb;
use super::pb::tensor_proto::{DataLocation, DataType};
use super::{Array, OnnxError, Result};

pub(super) struct DisplayDataType(i32);

impl fmt::Display for DisplayDataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match DataType::try_from(self.0) {
            Ok(t) => write!(f, "{} ({})", t.as_str_name(), self.0),
            Err(_) => write!(f, "#{} (unknown)", self.0),
        }
    }
}

/// Decodes a FLOAT tensor's elements from `raw_data` (little-endian) or
/// `float_data`, checking the count against the dims.
pub(super) fn read_f32(t: &pb::TensorProto) -> Result<Vec<f32>> {
    let name = t.name().to_string();
    if t.data_location == Some(DataLocation::External as i32) || !t.external_data.is_empty() {
        return Err(OnnxError::ExternalData { tensor: name });
    }
    let dt = t.data_type.unwrap_or(DataType::Undefined as i32);
    if dt != DataType::Float as i32 {
        return Err(OnnxError::TensorType {
            tensor: name,
            data_type: DisplayDataType(dt).to_string(),
        });
    }
    let mut expected: u64 = 1;
    for &d in &t.dims {
        let d = u64::try_from(d).map_err(|_| {
            OnnxError::Malformed(format!(
                "tensor '{name}' has a negative dimension in {:?}",
                t.dims
            ))
        })?;
        expected = expected.checked_mul(d).ok_or_else(|| {
            OnnxError::Malformed(format!(
                "tensor '{name}' has dims {:?} whose product overflows",
                t.dims
            ))
        })?;
    }
    let size_err = |found: u64, detail: String| OnnxError::TensorSize {
        tensor: name.clone(),
        dims: t.dims.clone(),
        expected,
        found,
        detail,
    };
    let data = match &t.raw_data {
        // ONNX: raw_data if set, else the typed field. An empty raw_data next
        // to a filled float_data is a writer quirk; the float_data is meant.
        Some(raw) if !raw.is_empty() || t.float_data.is_empty() => {
            let (chunks, rest) = raw.as_chunks::<4>();
            if !rest.is_empty() {
                return Err(size_err(
                    chunks.len() as u64,
                    format!(" (raw_data is {} bytes, not a multiple of 4)", raw.len()),
                ));
            }
            chunks
                .iter()
                .map(|c| f32::from_le_bytes(*c))
                .collect::<Vec<f32>>()
        }
        _ => t.float_data.clone(),
    };
    if data.len() as u64 != expected {
        return Err(size_err(data.len() as u64, String::new()));
    }
    Ok(data)
}

/// Reads a head bias: `[O]`, or also `[1, O]` when `allow_row` (Gemm's C).
pub(super) fn read_bias(
    t: &pb::TensorProto,
    o: usize,
    role: &str,
    allow_row: bool,
) -> Result<Array> {
    let o64 = o as i64;
    let ok = match t.dims.as_slice() {
        [n] => *n == o64,
        [1, n] => allow_row && *n == o64,
        _ => false,
    };
    if !ok {
        return Err(OnnxError::Shape {
            role: role.to_string(),
            tensor: t.name().to_string(),
            expected: if allow_row {
                format!("[O = {o}] or [1, {o}]")
            } else {
                format!("[O = {o}]")
            },
            found: t.dims.clone(),
        });
    }
    reshape(read_f32(t)?, &[o64])
}

pub(super) fn to_usize(v: i64) -> Result<usize> {
    usize::try_from(v)
        .map_err(|_| OnnxError::Malformed(format!("dimension {v} does not fit in usize")))
}

/// Wraps already-counted data in an [`Array`] of the given shape.
pub(super) fn reshape(data: Vec<f32>, shape: &[i64]) -> Result<Array> {
    let shape = shape
        .iter()
        .map(|&d| to_usize(d))
        .collect::<Result<Vec<_>>>()?;
    debug_assert_eq!(shape.iter().product::<usize>(), data.len());
    Ok(Array { shape, data })
}

/// `[rows, cols]` → `[cols, rows]`.
pub(super) fn transpose2(a: &Array) -> Array {
    let (rows, cols) = (a.shape[0], a.shape[1]);
    let mut data = Vec::with_capacity(a.data.len());
    for c in 0..cols {
        for r in 0..rows {
            data.push(a.data[r * cols + c]);
        }
    }
    Array {
        shape: vec![cols, rows],
        data,
    }
}
