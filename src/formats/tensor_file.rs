//! Reading safetensors files, shared by the native and PyTorch formats:
//! a size bound, parsing, and one checked tensor read (name, dtype, shape,
//! finite values).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::SafeTensors;

use super::files::FileError;
use crate::model::ModelError;

/// Largest weights file read into memory (4 GiB): a bound against a corrupt
/// or hostile file, well above any GRU this server is for.
pub const MAX_WEIGHTS_BYTES: u64 = 4 << 30;

/// Why tensors could not be read from (or written as) safetensors.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: {len} bytes is over the {max}-byte limit", .path.display())]
    TooLarge { path: PathBuf, len: u64, max: u64 },
    #[error("{}: not a valid safetensors file ({reason})", .path.display())]
    NotSafetensors {
        path: PathBuf,
        reason: safetensors::SafeTensorError,
    },
    #[error("missing tensor '{0}'")]
    Missing(String),
    #[error("tensor '{name}' has unsupported dtype {found:?}")]
    UnsupportedDtype {
        name: String,
        found: safetensors::Dtype,
    },
    #[error("tensor '{name}' is {found:?}, expected {expected:?}")]
    Dtype {
        name: String,
        found: DType,
        expected: DType,
    },
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    Shape {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("tensor '{name}' holds a non-finite value at flat index {index}")]
    NonFinite { name: String, index: usize },
    #[error("serialize: {0}")]
    Serialize(safetensors::SafeTensorError),
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
}

impl From<TensorFileError> for ModelError {
    fn from(e: TensorFileError) -> Self {
        match e {
            TensorFileError::File(e) => e.into(),
            TensorFileError::Tensor(e) => ModelError::Candle(e),
            other => ModelError::Weights(other.to_string()),
        }
    }
}

/// Prefixes a weights error with the file it is about.
pub(super) fn in_file(e: ModelError, path: &Path) -> ModelError {
    match e {
        ModelError::Weights(m) => ModelError::Weights(format!("{}: {m}", path.display())),
        other => other,
    }
}

pub(super) fn read_limited(path: &Path) -> Result<Vec<u8>, TensorFileError> {
    let len = std::fs::metadata(path).map_err(FileError::io(path))?.len();
    if len > MAX_WEIGHTS_BYTES {
        return Err(TensorFileError::TooLarge {
            path: path.to_path_buf(),
            len,
            max: MAX_WEIGHTS_BYTES,
        });
    }
    Ok(std::fs::read(path).map_err(FileError::io(path))?)
}

pub(super) fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, TensorFileError> {
    SafeTensors::deserialize(bytes).map_err(|reason| TensorFileError::NotSafetensors {
        path: path.to_path_buf(),
        reason,
    })
}

pub(super) fn check_finite(name: &str, t: &Tensor) -> Result<(), TensorFileError> {
    let bad = t
        .flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .iter()
        .position(|v| !v.is_finite());
    match bad {
        Some(index) => Err(TensorFileError::NonFinite {
            name: name.to_string(),
            index,
        }),
        None => Ok(()),
    }
}

/// Reads one tensor from a safetensors file, checking dtype, shape and values.
pub(super) fn take(
    st: &SafeTensors<'_>,
    name: &str,
    shape: &[usize],
    dtype: DType,
    device: &Device,
) -> Result<Tensor, TensorFileError> {
    let view = st
        .tensor(name)
        .map_err(|_| TensorFileError::Missing(name.to_string()))?;
    let found = st_dtype(view.dtype()).ok_or_else(|| TensorFileError::UnsupportedDtype {
        name: name.to_string(),
        found: view.dtype(),
    })?;
    if found != dtype {
        return Err(TensorFileError::Dtype {
            name: name.to_string(),
            found,
            expected: dtype,
        });
    }
    if view.shape() != shape {
        return Err(TensorFileError::Shape {
            name: name.to_string(),
            found: view.shape().to_vec(),
            expected: shape.to_vec(),
        });
    }
    let t = Tensor::from_raw_buffer(view.data(), dtype, shape, device)?;
    check_finite(name, &t)?;
    Ok(t)
}

pub(super) fn st_dtype(d: safetensors::Dtype) -> Option<DType> {
    match d {
        safetensors::Dtype::F32 => Some(DType::F32),
        safetensors::Dtype::F64 => Some(DType::F64),
        safetensors::Dtype::F16 => Some(DType::F16),
        safetensors::Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Serializes named tensors, with optional file metadata.
pub(super) fn serialize(
    tensors: Vec<(String, Tensor)>,
    meta: Option<std::collections::HashMap<String, String>>,
) -> Result<Vec<u8>, TensorFileError> {
    safetensors::serialize(tensors, meta).map_err(TensorFileError::Serialize)
}
