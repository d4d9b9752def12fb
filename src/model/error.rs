//! The model layer's error type.

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
