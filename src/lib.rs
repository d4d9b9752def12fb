//! gru-serve: a model server for GRU recurrent networks.
//!
//! Layers, each usable without the ones above it (see `../shared/DESIGN.md`):
//! - [`model`]: the GRU math on candle tensors: cells, stacked networks, weights
//!   in and out, analytic BPTT and training. No gRPC, no tokio.
//! - [`onnx`]: reading GRU graphs out of ONNX files (protobuf, via prost).

pub mod model;

#[cfg(feature = "onnx")]
pub mod onnx;
