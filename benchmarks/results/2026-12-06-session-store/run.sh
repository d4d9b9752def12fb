#!/usr/bin/env bash
# The session store's cost on the serving path and its own speeds (issue 15).
# Run from the repository root after:
#   cargo build --release --example loadgen --example store_bench
set -euo pipefail
out="$(dirname "$0")"
lg=target/release/examples/loadgen
sb=target/release/examples/store_bench
redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
redis=$!
trap 'kill $redis' EXIT
sleep 0.5
{ uptime; top -bn1 | head -12; } >"$out/machine.txt"
for run in 1 2 3; do
  for k in 1 32; do
    for store in memory redis-1s redis-100ms; do
      case $store in
        memory) flags=(--session-store memory) ;;
        redis-1s) flags=(--session-store redis://127.0.0.1:6390 --checkpoint-interval 1s) ;;
        redis-100ms) flags=(--session-store redis://127.0.0.1:6390 --checkpoint-interval 100ms) ;;
      esac
      "$lg" --sessions 256 --k $k --duration-secs 5 --warmup-secs 1 "${flags[@]}" \
        --json "$out/s256_k${k}_${store}_run$run.json" >"$out/s256_k${k}_${store}_run$run.txt" 2>&1
    done
  done
done
"$sb" file --sessions 100000 --hidden 128 | tee "$out/file_100k.txt"
"$sb" takeover --redis-url redis://127.0.0.1:6390 --sessions 2000 --hidden 128 | tee "$out/takeover.txt"
"$sb" takeover --redis-url redis://127.0.0.1:6390 --sessions 2000 --hidden 128 --live-owner | tee -a "$out/takeover.txt"
redis-cli -p 6390 info memory | grep -E "used_memory:|used_memory_human" >"$out/redis_memory.txt" || true
