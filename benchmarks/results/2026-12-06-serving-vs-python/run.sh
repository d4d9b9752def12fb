#!/usr/bin/env bash
# Serving vs the Python baselines (scripts/baseline), 3 alternating runs.
set -u
cd /work/main
B=target/release/examples/loadgen
PY=/work/venv-ref/bin/python
R=benchmarks/results/2026-12-06-serving-vs-python
mkdir -p $R; git rev-parse HEAD > $R/commit.txt; nproc > $R/nproc.txt
for run in 1 2 3; do
  uptime >> $R/uptime.txt
  for k in 1 32; do
    $B --sessions 256 --k $k --duration-secs 5 --warmup-secs 1 --json $R/gru-ct1_s256_k${k}_run$run.json | grep -E "throughput|round trip" | sed "s/^/run$run gru k$k: /"
  done
  for mode in thread aio batch; do
    log=$R/py-${mode}_run$run.log
    $PY scripts/baseline/python_server.py --port 50052 --mode $mode --torch-threads 1 > $log 2>&1 &
    pid=$!
    for i in $(seq 1 300); do grep -q "50052" $log 2>/dev/null && break; sleep 0.2; done
    for k in 1 32; do
      $B --target http://127.0.0.1:50052 --sessions 256 --k $k --duration-secs 5 --warmup-secs 1 --json $R/py-${mode}_s256_k${k}_run$run.json | grep -E "throughput|round trip" | sed "s/^/run$run py-$mode k$k: /"
    done
    kill $pid; wait $pid 2>/dev/null
  done
done
uptime >> $R/uptime.txt
