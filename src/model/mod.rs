//! The GRU math on candle tensors: no gRPC, no tokio, no prost.
//!
//! - [`layer`]: one layer's parameters and the internal layout.
//! - [`forward`]: the time loop of one layer: dispatch and the candle-op
//!   reference; [`cpu`]: the fused CPU path (kernels, packed gemm, threads).
//! - [`network`]: stacked layers + linear head; `step` and padded `forward`.
//!
//! Files in and out (native, PyTorch, ONNX) live in `crate::formats`.

pub mod bptt;
pub mod config;
pub mod cpu;
mod error;
pub mod forward;
pub mod layer;
pub mod network;
pub mod train;

pub use config::{ModelConfig, Precision, ResetMode, Task, FORMAT_VERSION};
pub use error::{ModelError, Result};
pub use forward::Backend;
pub use layer::{GruLayer, LayerParams};
pub use network::{GruModel, Head};
