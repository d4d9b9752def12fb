#!/usr/bin/env bash
# Generates the Python protobuf/gRPC stubs for proto/gru/v1/gru.proto with
# grpcio-tools into scripts/baseline/_gen/ (generated, not committed).
# Run from anywhere; uses $PYTHON (default: .venv/bin/python if present, else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python3; fi
fi
out="$here/_gen"
rm -rf "$out"
mkdir -p "$out"
"$py" -m grpc_tools.protoc \
  -I "$root/proto" \
  --python_out="$out" \
  --pyi_out="$out" \
  --grpc_python_out="$out" \
  "$root/proto/gru/v1/gru.proto"
# Packages for the generated modules (gru.v1.gru_pb2 imports itself by that name).
touch "$out/gru/__init__.py" "$out/gru/v1/__init__.py"
echo "stubs written to $out"
