#!/usr/bin/env bash
# Triton's Python clients (tritonclient 2.73, gRPC and HTTP) against a real
# gru-serve, as CI runs them:
#
#   1. makes the venv from scripts/triton/requirements.txt (its own: tritonclient
#      needs protobuf < 7; reused while the file is unchanged) and generates
#      the gru.v1 stubs the reference numbers come from;
#   2. starts the server binary (built by `cargo build`/`cargo test`) on
#      models/ with free loopback ports for gRPC and the v2 HTTP port, and a
#      1 MiB message limit (the oversize case);
#   3. runs test_clients.py, stops the server (SIGTERM, must exit 0) and
#      prints the wall time.
#
# Environment: CARGO_TARGET_DIR (default target/), TRITON_PROFILE (debug,
# default, or release), TRITON_VENV (default ~/.cache/gru-serve/triton-venv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
started=$(date +%s)
bin="${CARGO_TARGET_DIR:-$root/target}/${TRITON_PROFILE:-debug}/gru-serve"
venv="${TRITON_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gru-serve/triton-venv}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gru-triton.XXXXXX")"
server_pid=""
cleanup() {
  local rc=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f "$work/server.log" ]]; then
    echo "== server log (last 40 lines)"; tail -n 40 "$work/server.log"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

[[ -x "$bin" ]] || cargo build --bin gru-serve
stamp="$venv/.requirements.sha256"
want="$(sha256sum scripts/triton/requirements.txt | cut -d' ' -f1)"
if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r scripts/triton/requirements.txt
  echo "$want" > "$stamp"
fi
PYTHON="$venv/bin/python" clients/python/gen_stubs.sh "$work/stubs" >/dev/null

free_port() { "$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
grpc_port=$(free_port); http_port=$(free_port)
"$bin" --listen "127.0.0.1:$grpc_port" --http-listen "127.0.0.1:$http_port" \
  --metrics-listen off --model-dir models --max-message-bytes 1MiB \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do
  if "$bin" health --addr "127.0.0.1:$grpc_port" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
"$venv/bin/python" scripts/triton/test_clients.py --grpc "127.0.0.1:$grpc_port" \
  --http "127.0.0.1:$http_port" --stubs "$work/stubs"
kill -TERM "$server_pid"; wait "$server_pid"; server_pid=""
echo "== tritonclient checks: $(( $(date +%s) - started )) s wall"
