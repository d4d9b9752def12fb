//! Compiles proto/ with protox (a pure-Rust protobuf compiler), so no system
//! `protoc` is needed on any machine that builds gru-serve.

fn main() {
    git_sha();
    #[cfg(feature = "onnx")]
    compile_onnx();
    #[cfg(feature = "grpc")]
    compile_store();
    #[cfg(feature = "grpc")]
    compile_gru();
    #[cfg(feature = "grpc")]
    compile_inference();
}

/// The stored session format (plain prost: the engine has no gRPC types).
/// gru.proto imports it and refers to these types by `extern_path`.
#[cfg(feature = "grpc")]
fn compile_store() {
    let proto = "proto/gru/store/v1/snapshot.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"]).expect("compile the snapshot proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("store");
    std::fs::create_dir_all(&out).expect("create OUT_DIR/store");
    prost_build::Config::new()
        .out_dir(out)
        .compile_fds(fds)
        .expect("generate gru.store.v1 types");
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
        .extern_path(".gru.store.v1", "crate::engine::store::pb")
        .compile_fds(fds)
        .expect("generate gru.v1 gRPC code");
}

/// Triton's public protos (`package inference`), vendored unchanged: the
/// KServe v2 / Triton adapter in src/service/triton speaks them.
#[cfg(feature = "grpc")]
fn compile_inference() {
    use prost::Message;
    let protos = [
        "proto/inference/grpc_service.proto",
        "proto/inference/model_config.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(["proto/inference/grpc_service.proto"], ["proto/inference"])
        .expect("compile proto/inference/grpc_service.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    std::fs::write(out.join("inference_descriptor.bin"), fds.encode_to_vec())
        .expect("write inference_descriptor.bin");
    tonic_prost_build::configure()
        // The messages and the client (tests and tools call the server with
        // it); the server is generated apart, below.
        .build_server(false)
        .build_client(true)
        // Tensor bytes as `Bytes`: decoded as a slice of the received
        // buffer, not copied out of it.
        .bytes(".inference.ModelInferRequest.raw_input_contents")
        .bytes(".inference.ModelInferResponse.raw_output_contents")
        // Typed contents (nine vectors) boxed: unboxed, an input tensor is
        // ~300 bytes and the decoder's first push of one allocates 1.2 kB,
        // which sends glibc's malloc into a free-list consolidation on
        // every request (perf, BENCHMARKS.md).
        .boxed(".inference.ModelInferRequest.InferInputTensor.contents")
        .btree_map(".inference.ModelInferRequest")
        .btree_map(".inference.ModelInferResponse")
        .extern_path(".inference.ModelStreamInferResponse", STREAM_RESPONSE)
        .compile_fds(fds.clone())
        .expect("generate inference messages and client");
    // The server alone, on the messages above, except the two coded by
    // hand for speed (same wire format): the request it reads
    // (src/service/triton/decode.rs) and the stream's reply
    // (src/service/triton/wire.rs).
    let server = out.join("inference_server");
    std::fs::create_dir_all(&server).expect("create OUT_DIR/inference_server");
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(server)
        .extern_path(".inference", "crate::service::triton::pb")
        .extern_path(
            ".inference.ModelInferRequest",
            "crate::service::triton::decode::ModelInferRequest",
        )
        .extern_path(".inference.ModelStreamInferResponse", STREAM_RESPONSE)
        .compile_fds(fds)
        .expect("generate the inference gRPC server");
}

#[cfg(feature = "grpc")]
const STREAM_RESPONSE: &str = "crate::service::triton::wire::ModelStreamInferResponse";

/// `GRU_GIT_SHA` for `gru_build_info`: the commit being built, or "unknown"
/// where there is no git (the Docker build copies no .git).
fn git_sha() {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let sha = git(&["rev-parse", "--short=12", "HEAD"]);
    if sha.is_some() {
        // Rebuild the label when HEAD moves (a commit, a checkout).
        // (A missing file would rerun this script on every build: skipped.)
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        for path in std::iter::once("HEAD").chain(branch.as_deref()) {
            if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                if std::path::Path::new(&p).exists() {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
        }
    }
    println!(
        "cargo:rustc-env=GRU_GIT_SHA={}",
        sha.as_deref().unwrap_or("unknown")
    );
}
