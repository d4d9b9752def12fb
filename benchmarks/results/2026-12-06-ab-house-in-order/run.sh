#!/bin/bash
# A/B of the serving path: loadgen-base = f9d38e9 (before this work), loadgen-new = this
# commit's tree; release builds, in-process server (H = 256, I = 64), alternated, 3 pairs.
set -u
for run in 1 2 3; do
  for v in base new; do
    /tmp/loadgen-$v --sessions 256 --k 1 --duration-secs 5 --warmup-secs 1 > s256_k1_${v}_run$run.txt 2>&1
    /tmp/loadgen-$v --sessions 256 --k 32 --duration-secs 4 --warmup-secs 1 > s256_k32_${v}_run$run.txt 2>&1
    taskset -c 0 /tmp/loadgen-$v --sessions 1 --k 1 --duration-secs 3 --warmup-secs 0.5 > s1_k1_${v}_run$run.txt 2>&1
  done
done
