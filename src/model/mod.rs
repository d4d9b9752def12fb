//! The GRU math on candle tensors: no gRPC, no tokio, no prost.
//!
//! - [`layer`]: one layer's parameters, the internal layout, conversions.
//! - [`forward`]: the time loop of one layer: dispatch and the candle-op
//!   reference; [`cpu`]: the fused CPU path (kernels, packed gemm, threads).
//! - [`network`]: stacked layers + linear head; `step` and padded `forward`.
//! - [`weights`]: native folder format, PyTorch state dicts, ONNX arrays.

pub mod bptt;
pub mod config;
pub mod cpu;
pub mod forward;
pub mod layer;
pub mod network;
pub mod train;
pub mod weights;

pub use config::{ModelConfig, Precision, ResetMode, Task, FORMAT_VERSION};
pub use forward::Backend;
pub use layer::{GruLayer, LayerParams};
pub use network::{GruModel, Head};

/// Errors of the model layer. Messages name the tensor, field or file and
/// the values involved, because they reach users verbatim.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("invalid weights: {0}")]
    Weights(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("training was cancelled")]
    Cancelled,
    #[error("non-finite values: {0}")]
    NonFinite(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ModelError {
    /// A stable, short name for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            ModelError::Config(_) => "config",
            ModelError::Shape(_) => "shape",
            ModelError::Input(_) => "input",
            ModelError::Weights(_) => "weights",
            ModelError::Unsupported(_) => "unsupported",
            ModelError::Io { .. } => "io",
            ModelError::Candle(_) => "candle",
            ModelError::Cancelled => "cancelled",
            ModelError::NonFinite(_) => "non_finite",
            ModelError::Internal(_) => "internal",
        }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
