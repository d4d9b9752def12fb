#!/usr/bin/env bash
# Generates the Python protobuf/gRPC stubs for proto/gru/v1/gru.proto into
# scripts/baseline/_gen/ (generated, not committed), with the same script the
# Python client uses. Uses $PYTHON (default: .venv/bin/python if present,
# else python3).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
if [[ -z "${PYTHON:-}" && -x "$root/.venv/bin/python" ]]; then
  export PYTHON="$root/.venv/bin/python"
fi
exec "$root/clients/python/gen_stubs.sh" "$here/_gen"
