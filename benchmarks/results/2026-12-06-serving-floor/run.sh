#!/bin/bash
# A/B of the one-step streaming path (issue 18): loadgen-main = 3cbec53 (main
# before this work), loadgen-new = this branch; release builds of
# examples/loadgen, in-process server, alternated main, new in every pair.
# Each pair is preceded by `uptime` and `top -bn1` (the machine is shared).
# Usage: run.sh PAIRS  (outputs land in the current folder)
set -u
P=${1:-3}
L=/tmp/loadgen
run() { # name, binary, args...
  local name=$1 bin=$2; shift 2
  $L-$bin "$@" --duration-secs 5 --warmup-secs 1 --json ${name}.json > ${name}.txt 2>&1
}
note() { { date -u +%T; uptime; top -bn1 | head -15; echo; } >> load.txt; }
for p in $(seq 1 $P); do
  note; for v in main new; do run s256_k1_${v}_run$p $v --sessions 256 --k 1; done
  note; for v in main new; do run s1_k1_${v}_run$p $v --sessions 1 --k 1; done
        run s1_k1_echo_run$p new --sessions 1 --k 1 --echo
  note; for v in main new; do run h32_s256_k1_${v}_run$p $v --sessions 256 --k 1 --input-size 1 --hidden-size 32 --head 1; done
        run h32_s256_k1_echo_run$p new --sessions 256 --k 1 --input-size 1 --hidden-size 1 --echo
  note; for v in main new; do run s1024_k1_${v}_run$p $v --sessions 1024 --k 1; done
  note; for v in main new; do run s256_k32_${v}_run$p $v --sessions 256 --k 32; done
  note; for v in main new; do taskset -c 0 $L-$v --sessions 1 --k 1 --duration-secs 3 --warmup-secs 0.5 --json s1_k1_pinned_${v}_run$p.json > s1_k1_pinned_${v}_run$p.txt 2>&1; done
        taskset -c 0 $L-new --sessions 1 --k 1 --duration-secs 3 --warmup-secs 0.5 --echo --json s1_k1_pinned_echo_run$p.json > s1_k1_pinned_echo_run$p.txt 2>&1
done
note
