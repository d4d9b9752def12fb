#!/usr/bin/env bash
# The tutorial (docs/TUTORIAL.md) end to end, as CI runs it:
#
#   1. builds the server and the tutorial examples (release, or the dev
#      profile with TUTORIAL_PROFILE=dev, as CI does right after `cargo test`
#      has built everything they need);
#   2. makes the Python venv from clients/python/requirements*.txt (reused
#      while those files are unchanged) and generates the gRPC stubs;
#   3. starts gru-serve on a copy of models/ on a free loopback port, with
#      --model-poll 1s, and waits until it is SERVING;
#   4. runs every step: the Rust examples tutorial_stream and tutorial_train,
#      then tutorial.py stream, train, to-pytorch and from-pytorch. Each step
#      checks its own numbers and exits non-zero when they are wrong;
#   5. stops the server (SIGTERM; it must exit 0) and prints the timings.
#
# Any failure fails the script. Environment:
#   CARGO_TARGET_DIR  the build folder (default: target/)
#   TUTORIAL_VENV     the venv (default: ~/.cache/gru-serve/tutorial-venv, made
#                     anew whenever the requirements files change)
#   TUTORIAL_TORCH=0  skip the PyTorch steps (a venv without torch, by default
#                     ~/.cache/gru-serve/tutorial-venv-notorch)
#   TUTORIAL_OUT      keep the pictures here (default: a temporary folder)
#   TUTORIAL_PROFILE  release (default) or dev: dev reuses the test build's
#                     dependencies (optimised even in dev, see Cargo.toml), so
#                     CI needs no second, release build of the whole tree
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
profile="${TUTORIAL_PROFILE:-release}"
case "$profile" in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) echo "TUTORIAL_PROFILE must be release or dev, not '$profile'"; exit 2 ;;
esac
bin="$target/$profile_dir/gru-serve"
examples="$target/$profile_dir/examples"
torch="${TUTORIAL_TORCH:-1}"
venv_default="${XDG_CACHE_HOME:-$HOME/.cache}/gru-serve/tutorial-venv"
if [[ "$torch" != 1 ]]; then venv_default+="-notorch"; fi
venv="${TUTORIAL_VENV:-$venv_default}"
work="$(mktemp -d "${TMPDIR:-/tmp}/gru-tutorial.XXXXXX")"
out="${TUTORIAL_OUT:-$work/img}"
server_pid=""
timings=()

cleanup() {
  local rc=$?
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ $rc -ne 0 && -f "$work/server.log" ]]; then
    echo "== server log (last 40 lines)"
    tail -n 40 "$work/server.log"
  fi
  rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT

# step NAME COMMAND...: runs it, records how long it took.
step() {
  local name="$1" start end
  shift
  echo "== $name"
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  timings+=("$(awk -v a="$start" -v b="$end" -v n="$name" 'BEGIN { printf "%7.1f s  %s", b - a, n }')")
}

build() {
  cargo build --profile "$profile" --bin gru-serve --example tutorial_stream --example tutorial_train --example tutorial_failover
}

make_venv() {
  local reqs=(clients/python/requirements.txt)
  if [[ "$torch" == 1 ]]; then reqs+=(clients/python/requirements-torch.txt); fi
  local stamp
  stamp="$(cat "${reqs[@]}" | sha256sum | cut -c1-16) $(python3 --version 2>&1)"
  if [[ -x "$venv/bin/python" && "$(cat "$venv/.tutorial-stamp" 2>/dev/null)" == "$stamp" ]]; then
    echo "reusing $venv"
  else
    if [[ -e "$venv" && ! -f "$venv/.tutorial-stamp" ]]; then
      echo "$venv exists and was not made by this script: remove it or set TUTORIAL_VENV"
      return 1
    fi
    echo "creating $venv from ${reqs[*]}"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    local args=()
    for r in "${reqs[@]}"; do args+=(-r "$r"); done
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir "${args[@]}"
    echo "$stamp" >"$venv/.tutorial-stamp"
  fi
  PYTHON="$venv/bin/python" clients/python/gen_stubs.sh
}

start_server() {
  # A restart reuses the folder and the port (and so the sessions, which
  # the default file store keeps in the model folder's .sessions).
  [[ -d "$work/models" ]] || cp -r models "$work/models"
  port="${port:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
  local flags=(--listen "127.0.0.1:$port" --model-dir "$work/models" --log warn)
  if [[ -z "$missing_poll" ]]; then flags+=(--model-poll 1s); fi
  # No Prometheus port: it would clash with any other server on this machine.
  if grep -q -- '--metrics-listen' <<<"$help"; then flags+=(--metrics-listen off); fi
  "$bin" "${flags[@]}" >>"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 150); do
    if "$bin" health --addr "http://127.0.0.1:$port" --timeout 1s >/dev/null 2>&1; then
      echo "SERVING on 127.0.0.1:$port (pid $server_pid)"
      return 0
    fi
    kill -0 "$server_pid" 2>/dev/null || { echo "the server exited"; return 1; }
    sleep 0.2
  done
  echo "the server was not SERVING after 30 s"
  return 1
}

check_pictures() {
  local f
  for f in loss.png loss.svg prediction.png prediction.svg; do
    [[ -s "$out/$f" ]] || { echo "missing or empty: $out/$f"; return 1; }
  done
  for f in loss.png prediction.png; do
    [[ "$(head -c 8 "$out/$f" | od -An -tx1 | tr -d ' \n')" == 89504e470d0a1a0a ]] ||
      { echo "not a PNG: $out/$f"; return 1; }
  done
  for f in loss.svg prediction.svg; do
    grep -q '<svg' "$out/$f" || { echo "not an SVG: $out/$f"; return 1; }
  done
  echo "pictures OK in $out"
}

# A stream that survives a server restart: tutorial_failover pauses half-way,
# the server is stopped (SIGTERM) and started again meanwhile, and the stream
# goes on; the example checks every output against an uninterrupted run.
failover_demo() {
  "$examples/tutorial_failover" --addr "$url" --pause 4s >"$work/failover.log" 2>&1 &
  local demo=$! rc=0
  for _ in $(seq 1 100); do grep -q pausing "$work/failover.log" && break; sleep 0.1; done
  stop_server && start_server || { kill "$demo" 2>/dev/null; return 1; }
  wait "$demo" || rc=$?
  cat "$work/failover.log"
  return $rc
}

stop_server() {
  kill -TERM "$server_pid"
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=""
  [[ $rc -eq 0 ]] || { echo "the server exited with status $rc after SIGTERM"; return 1; }
  echo "the server stopped cleanly"
}

total_start=$(date +%s.%N)
step "build ($profile): gru-serve, tutorial_stream, tutorial_train, tutorial_failover" build

# Features the PyTorch steps need from the binary.
missing_export="" missing_poll=""
help="$("$bin" --help)"
"$bin" export --help >/dev/null 2>&1 || missing_export="the 'gru-serve export' subcommand"
grep -q -- '--model-poll ' <<<"$help" || missing_poll="the --model-poll flag"
for m in "$missing_export" "$missing_poll"; do
  [[ -z "$m" ]] || echo "!! this gru-serve lacks $m: the PyTorch steps that need it will fail"
done

step "Python venv and stubs" make_venv
py="$venv/bin/python"
step "start the server" start_server
url="http://127.0.0.1:$port"

step "rust: tutorial_stream" "$examples/tutorial_stream" --addr "$url"
step "rust: tutorial_train" "$examples/tutorial_train" --addr "$url" --out-dir "$out"
step "pictures" check_pictures
step "python: stream" "$py" clients/python/tutorial.py --addr "127.0.0.1:$port" stream
step "python: train" "$py" clients/python/tutorial.py --addr "127.0.0.1:$port" train
step "rust: a stream survives a server restart" failover_demo
step "python: the failover helper against real restarts" "$py" clients/python/test_failover.py --gru-serve "$bin"

failed=()
if [[ "$torch" == 1 ]]; then
  if [[ -n "$missing_export" ]]; then
    failed+=("python: to-pytorch (needs $missing_export)")
  else
    step "python: to-pytorch" "$py" clients/python/tutorial.py --addr "127.0.0.1:$port" \
      to-pytorch --model sine-tutorial --model-dir "$work/models" --gru-serve "$bin"
  fi
  if [[ -n "$missing_poll" ]]; then
    failed+=("python: from-pytorch (needs $missing_poll)")
  else
    step "python: from-pytorch" "$py" clients/python/tutorial.py --addr "127.0.0.1:$port" \
      from-pytorch --model-dir "$work/models"
  fi
else
  echo "!! TUTORIAL_TORCH=0: the PyTorch steps were skipped"
fi
step "stop the server" stop_server

total_end=$(date +%s.%N)
echo "== timings"
printf '%s\n' "${timings[@]}"
awk -v a="$total_start" -v b="$total_end" 'BEGIN { printf "%7.1f s  total\n", b - a }'
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "== FAILED"
  printf '  %s\n' "${failed[@]}"
  exit 1
fi
echo "== tutorial OK"
