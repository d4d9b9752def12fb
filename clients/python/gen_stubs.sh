#!/usr/bin/env bash
# Generates the Python protobuf and gRPC modules for proto/gru/v1/gru.proto
# with grpcio-tools into clients/python/_gen/, or into the folder given as the
# first argument (generated, not committed). Uses $PYTHON, else the python3 on
# PATH (e.g. the venv's, once activated).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-python3}"
out="${1:-$here/_gen}"
rm -rf "$out"
mkdir -p "$out"
"$py" -m grpc_tools.protoc \
  -I "$root/proto" \
  --python_out="$out" \
  --pyi_out="$out" \
  --grpc_python_out="$out" \
  "$root/proto/gru/v1/gru.proto" \
  "$root/proto/gru/store/v1/snapshot.proto"
# Packages for the generated modules (gru_pb2_grpc imports gru.v1.gru_pb2,
# which imports gru.store.v1.snapshot_pb2).
touch "$out/gru/__init__.py" "$out/gru/v1/__init__.py" \
  "$out/gru/store/__init__.py" "$out/gru/store/v1/__init__.py"
echo "stubs written to $out"
