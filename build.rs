//! Compiles proto/ with protox (a pure-Rust protobuf compiler), so no system
//! `protoc` is needed on any machine that builds gru-serve.

fn main() {
    #[cfg(feature = "onnx")]
    compile_onnx();
    #[cfg(feature = "grpc")]
    compile_gru();
}

#[cfg(feature = "onnx")]
fn compile_onnx() {
    let proto = "proto/onnx/onnx.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto/onnx"]).expect("compile proto/onnx/onnx.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate ONNX protobuf types");
}

#[cfg(feature = "grpc")]
fn compile_gru() {
    use prost::Message;
    let proto = "proto/gru/v1/gru.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"]).expect("compile proto/gru/v1/gru.proto");
    // The descriptor set feeds server reflection, so grpcurl needs no .proto file.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("gru_descriptor.bin"), fds.encode_to_vec())
        .expect("write gru_descriptor.bin");
    tonic_prost_build::configure()
        // Matrix (the float payload of every step) is coded by hand for
        // speed: src/service/matrix.rs, same wire format.
        .extern_path(".gru.v1.Matrix", "crate::service::pb::Matrix")
        .compile_fds(fds)
        .expect("generate gru.v1 gRPC code");
}
