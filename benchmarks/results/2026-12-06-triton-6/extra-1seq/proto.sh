#!/bin/bash
# proto.sh PAIRS BIN args... : alternate gru-v1 and triton-grpc with one binary
n=$1; bin=$2; shift 2
for i in $(seq 1 $n); do for p in gru-v1 triton-grpc; do
  /tmp/$bin --protocol $p "$@" --duration-secs 4 --warmup-secs 1 --json /tmp/prof/pp-$p-$i.json > /dev/null 2>&1
  python3 - "$p" /tmp/prof/pp-$p-$i.json <<'PY'
import json,sys
j=json.load(open(sys.argv[2])); r=j['messages_per_sec']
c={t['group']:t['cores'] for t in j['thread_cpu']}
us=lambda g: 1e6*c.get(g,0)/r
print('%-12s %8.0f msg/s p50 %6.0f p99 %6.0f client %.2f runtime %.2f worker %.2f total %.2f batch %.0f'%(sys.argv[1],r,j['latency']['p50_us'],j['latency']['p99_us'],us('client runtime'),us('server runtime'),us('server compute worker'),us('client runtime')+us('server runtime')+us('server compute worker'),(j.get('server_batches') or {}).get('mean_batch',0)))
PY
done; done
