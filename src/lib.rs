//! gru-serve: a model server for GRU recurrent networks.
//!
//! Layers, each usable without the ones above it (see `../shared/DESIGN.md`):
//! - [`model`]: the GRU math on candle tensors: cells, stacked networks, weights
//!   in and out, analytic BPTT and training. No gRPC, no tokio.
//! - [`formats`]: model files in and out: the native folder, PyTorch state
//!   dicts, ONNX graphs (protobuf, via prost, behind the `onnx` feature).
//!   Depends on `model`, never the reverse.

pub mod formats;
pub mod model;

#[cfg(feature = "grpc")]
pub mod commands;
#[cfg(feature = "grpc")]
pub mod config;
#[cfg(feature = "grpc")]
pub mod engine;
#[cfg(feature = "grpc")]
pub mod server;
#[cfg(feature = "grpc")]
pub mod service;

/// Sets the compute thread counts once, at start, before any compute runs:
/// the rayon pool our large matmuls use, and `RAYON_NUM_THREADS`, which
/// candle reads on every matmul (unset, it re-reads /proc/cpuinfo each time:
/// 3.4x slower at batch 1). Call it first thing in `main`, before any
/// thread is spawned: the binary, the benches and the examples all do.
pub fn init_compute_threads(threads: usize) {
    let threads = threads.max(1);
    // SAFETY: every caller runs this at the start of `main`, before it spawns
    // a thread, so none can read the environment meanwhile; rayon's pool
    // starts after.
    unsafe { std::env::set_var("RAYON_NUM_THREADS", threads.to_string()) };
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();
}
