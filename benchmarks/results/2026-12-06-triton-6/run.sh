#!/bin/bash
# KServe v2 / Triton protocol against gru.v1 (issue 16): the same release
# loadgen binary, in-process server (I = 64, H = 256, one layer), the same
# closed loop spoken as gru.v1 StepStream, Triton ModelStreamInfer (gRPC) and
# KServe v2 HTTP/JSON, alternated within each group. Each group is preceded
# by `uptime` and `top -bn1`.
# Usage: run.sh PAIRS [LOADGEN]  (outputs land in the current folder)
set -u
P=${1:-3}
LG=${2:-../../../target/release/examples/loadgen}
note() { { date -u +%T; uptime; top -bn1 | head -15; echo; } >> load.txt; }
for p in $(seq 1 $P); do
  for s in 256 1; do
    note
    for proto in gru-v1 triton-grpc triton-http; do
      $LG --sessions $s --k 1 --protocol $proto --duration-secs 5 --warmup-secs 1 \
        --json s${s}_k1_${proto}_run$p.json > s${s}_k1_${proto}_run$p.txt 2>&1
    done
  done
done
note
