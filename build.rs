//! Compiles proto/ with protox (a pure-Rust protobuf compiler), so no system
//! `protoc` is needed on any machine that builds gru-serve.

fn main() {
    #[cfg(feature = "onnx")]
    compile_onnx();
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
