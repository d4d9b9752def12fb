#!/usr/bin/env bash
# The `cuda` feature on a real GPU. NOT RUNNABLE on this project's developer
# and CI machines: they have no GPU and no CUDA toolkit (scripts/cuda/check.sh,
# a compile check with nvcc from PyPI wheels, is what runs there). This
# script has never been run here.
#
# Needs: an NVIDIA GPU with its driver (nvidia-smi), and a CUDA 13 toolkit
# (nvcc, cuBLAS, cuRAND, NVRTC and the libcuda stub: candle links them), e.g.
# /usr/local/cuda, or the builder stage of Dockerfile.cuda run with --gpus.
#
# Does:
#   1. cargo build --release --features cuda (the server binary);
#   2. cargo test --release --features cuda (the whole suite, CUDA compiled in;
#      the server itself computes on the CPU device);
#   3. the server started with --device cuda reports SERVING (gru-serve health);
#   4. scripts/cuda/compare: the same GRU forward passes (the shipped
#      models/sine/1 and random 2-layer models, both reset modes, f32 and
#      f64) on the CPU and on CUDA device 0; fails if they differ by more
#      than 1e-4 (f32) or 1e-10 (f64).
#
# Env: CUDA_ROOT (default /usr/local/cuda), CUDA_COMPUTE_CAP (default: read
# from nvidia-smi), CARGO_TARGET_DIR (default target/cuda-gpu).
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD

command -v nvidia-smi >/dev/null || { echo "gpu-check.sh: no nvidia-smi: this machine has no NVIDIA GPU driver" >&2; exit 1; }
nvidia-smi --query-gpu=name,driver_version,compute_cap --format=csv

export CUDA_ROOT=${CUDA_ROOT:-/usr/local/cuda}
export PATH="$CUDA_ROOT/bin:$PATH"
export LD_LIBRARY_PATH="$CUDA_ROOT/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
command -v nvcc >/dev/null || { echo "gpu-check.sh: no nvcc under $CUDA_ROOT: install a CUDA 13 toolkit" >&2; exit 1; }
nvcc --version | tail -n 2
if [ -z "${CUDA_COMPUTE_CAP:-}" ]; then
    CUDA_COMPUTE_CAP=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n 1 | tr -d '.')
fi
export CUDA_COMPUTE_CAP
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$REPO/target/cuda-gpu}"
case $CARGO_TARGET_DIR in /*) ;; *) CARGO_TARGET_DIR=$REPO/$CARGO_TARGET_DIR ;; esac

echo "== cargo build --release --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP)"
cargo build --release --locked --features cuda --bin gru-serve

echo "== cargo test --release --features cuda"
cargo test --release --locked --features cuda

echo "== the server on the GPU (--device cuda) answers its health check"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$CARGO_TARGET_DIR/release/gru-serve" --device cuda --listen "127.0.0.1:$port" --metrics-listen off &
server=$!
ok=""
for _ in $(seq 1 60); do
    if "$CARGO_TARGET_DIR/release/gru-serve" health --addr "http://127.0.0.1:$port"; then ok=1; break; fi
    kill -0 "$server" 2>/dev/null || break
    sleep 1
done
kill -TERM "$server" 2>/dev/null || true
wait "$server" || true
[ -n "$ok" ] || { echo "gpu-check.sh: the CUDA server never reported SERVING" >&2; exit 1; }

echo "== CPU vs CUDA forward passes"
cp Cargo.lock scripts/cuda/compare/Cargo.lock
trap 'rm -f "$REPO/scripts/cuda/compare/Cargo.lock"' EXIT
cargo run --release --manifest-path scripts/cuda/compare/Cargo.toml
echo "== gpu check passed"
