//! Generated from Triton's `proto/inference/*.proto` by build.rs; never edited.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("inference");

/// Coded by hand (same wire format): see `wire.rs`.
pub use super::wire::ModelStreamInferResponse;

/// The server, generated apart from the messages and the client: it reads
/// `ModelInferRequest` as [`super::decode::ModelInferRequest`] (build.rs).
mod server {
    include!(concat!(env!("OUT_DIR"), "/inference_server/inference.rs"));
}
pub use server::grpc_inference_service_server;

/// The encoded descriptor set, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
