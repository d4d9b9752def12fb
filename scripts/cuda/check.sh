#!/usr/bin/env bash
# Compile-checks the `cuda` feature on a machine with no CUDA toolkit and no GPU.
#
# candle's CUDA build runs nvcc (candle-kernels compiles its .cu files to PTX
# in its build script, even under `cargo check`). No system CUDA toolkit is
# needed: NVIDIA's PyPI wheels supply nvcc, NVVM (cicc), the CRT and runtime
# headers and CCCL, installed into a venv. Nothing is linked or run, so no
# driver (libcuda) and no GPU are needed. For a real GPU run see gpu-check.sh.
#
# Also compile-checks scripts/cuda/compare (gpu-check.sh's CPU-vs-CUDA program).
# Usage: scripts/cuda/check.sh [extra cargo check args, e.g. --all-targets]
# Env:   GRU_CUDA_VENV    venv for the wheels   (default /tmp/gru-cuda-venv)
#        CARGO_TARGET_DIR build dir (default /var/tmp/gru-cuda-check-target:
#                         outside the clone, so fresh clones (CI) on the same
#                         machine reuse the compiled CUDA kernels, the slow part)
#        CUDA_COMPUTE_CAP GPU arch to compile for (default 90: H100/H200)
set -euo pipefail
cd "$(dirname "$0")/../.."

# CUDA 13.4 toolkit wheels; CUDARC_CUDA_VERSION below must name the same
# major.minor (cudarc 0.19 knows up to 13.4 = 13040).
# nvidia-cuda-cccl has its own numbering (13.<CCCL version>); 13.3.4.3.1 is
# CCCL 3.4.3, which goes with CUDA 13.4.
PINS=(
    nvidia-cuda-nvcc==13.4.92
    nvidia-nvvm==13.4.92
    nvidia-cuda-crt==13.4.92
    nvidia-cuda-runtime==13.4.92
    nvidia-cuda-cccl==13.3.4.3.1
)
export CUDARC_CUDA_VERSION=13040
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/gru-cuda-check-target}"
VENV="${GRU_CUDA_VENV:-/tmp/gru-cuda-venv}"

start=$(date +%s)
echo "== cuda check: wheels into $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "${PINS[@]}"

# The CUDA 13 wheels share one prefix: site-packages/nvidia/cu13/{bin,include,lib,nvvm}.
CUDA_ROOT="$("$VENV/bin/python" - <<'EOF'
import os, nvidia
for base in nvidia.__path__:
    root = os.path.join(base, "cu13")
    if os.path.isfile(os.path.join(root, "bin", "nvcc")):
        print(root)
        break
EOF
)"
if [ -z "$CUDA_ROOT" ]; then
    echo "cuda check: no nvcc found in the nvidia wheels under $VENV" >&2
    exit 1
fi
# Wheels may drop the exec bits on the tools nvcc runs.
chmod +x "$CUDA_ROOT"/bin/* "$CUDA_ROOT"/nvvm/bin/* 2>/dev/null || true
export CUDA_ROOT CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"
export NVCC="$CUDA_ROOT/bin/nvcc"
export PATH="$CUDA_ROOT/bin:$PATH"
export LD_LIBRARY_PATH="$CUDA_ROOT/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$NVCC" --version | tail -n 2

echo "== cargo check --features cuda $* (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
cargo check --locked --features cuda "$@"

# gpu-check.sh's CPU-vs-CUDA program: kept compiling here, since no machine
# of this project can run it. Same env and target dir: nothing recompiles
# but the two crates.
echo "== cargo check scripts/cuda/compare (gpu-check.sh's comparison program)"
cp Cargo.lock scripts/cuda/compare/Cargo.lock
trap 'rm -f scripts/cuda/compare/Cargo.lock' EXIT
cargo check --manifest-path scripts/cuda/compare/Cargo.toml
echo "== cuda check passed in $(( $(date +%s) - start )) s"
