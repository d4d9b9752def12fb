#!/bin/bash
# A/B of the Triton stream's server cost: loadgen-before = a9fccb7 (this
# morning's main), loadgen-after = this session's main, both release builds;
# 256 sequences × k = 1, Triton gRPC, alternated in each pair, `uptime` and
# `top -bn1` before each pair. Usage: run.sh PAIRS
set -u
note() { { date -u +%T; uptime; top -bn1 | head -12; echo; } >> load.txt; }
for p in $(seq 1 ${1:-3}); do
  note
  for v in before after; do
    /tmp/loadgen-$v --sessions 256 --k 1 --protocol triton-grpc --duration-secs 5 --warmup-secs 1 \
      --json ${v}_run$p.json > ${v}_run$p.txt 2>&1
  done
done
