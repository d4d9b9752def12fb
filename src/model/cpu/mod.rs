//! The fused CPU path: the same math as the candle-op reference, over raw
//! buffers.
//!
//! - [`kernels`]: fused elementwise gate kernels (`Real`, `Rows`).
//! - [`gemm`]: strided views over tensor storage, gemm-crate products.
//! - `packed`: weights packed once per layer and their AVX-512 product.
//! - `forward`: per-thread workspaces, row blocks, the time loop.
//! - `backward`: one layer's BPTT.
//! - `parallel`: the helper threads that run row blocks beside the caller.

pub(crate) mod backward;
pub(crate) mod forward;
pub mod gemm;
pub mod kernels;
pub(crate) mod packed;
mod parallel;
