//! Model files in and out. Each format has a reader and a writer (where one
//! exists) and its own error type, converted into [`ModelError`] at the
//! public functions, where callers treat all formats alike.
//!
//! - [`native`]: a folder with `config.json` and `model.safetensors` in the
//!   internal layout (read and written).
//! - [`pytorch`]: an `nn.GRU` (+ optional `nn.Linear`) state dict as
//!   safetensors (read and written), and the exact layout conversions.
//! - [`onnx`] (feature `onnx`): GRU graphs out of ONNX files (read only).
//! - [`files`]: the crate's one atomic file write, used by the writers here
//!   and by the engine's records.
//!
//! This module depends on `crate::model`, never the reverse: the model core
//! knows no file format.
//!
//! [`ModelError`]: crate::model::ModelError

use candle_core::Tensor;

use crate::model::ModelError;

pub mod files;
pub mod native;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod pytorch;
mod tensor_file;

/// Negates the z block (the second of three blocks of `h`) along `dim`.
///
/// PyTorch, ONNX, cuDNN and Keras let z keep the old state; ours weights the
/// candidate (see `model/layer.rs`). Since 1 − σ(a) = σ(−a), their z is ours
/// with the z pre-activation negated: exact in floating point, and its own
/// inverse.
fn negate_z(t: &Tensor, dim: usize, h: usize) -> Result<Tensor, ModelError> {
    let r = t.narrow(dim, 0, h)?;
    let z = t.narrow(dim, h, h)?.neg()?;
    let c = t.narrow(dim, 2 * h, h)?;
    Ok(Tensor::cat(&[&r, &z, &c], dim)?)
}
