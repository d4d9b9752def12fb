#!/usr/bin/env python3
"""Tables for BENCHMARKS.md from run.sh's JSON: per case and protocol, the
runs' steps/s, p50 and p99, and each run's ratio to gru.v1 in the same group."""
import glob, json, re, statistics
runs = {}
for f in sorted(glob.glob("s*_k1_*_run*.json")):
    m = re.match(r"s(\d+)_k1_(.+)_run(\d+)\.json", f)
    s, proto, r = int(m[1]), m[2], int(m[3])
    runs[(s, proto, r)] = json.load(open(f))
for s in sorted({k[0] for k in runs}, reverse=True):
    print(f"\n{s} sessions x k = 1")
    print("| protocol | steps/s (runs) | ÷ gru.v1 per run (median) | p50 µs | p99 µs | errors |")
    print("|---|---|---|---|---|---|")
    for proto in ["gru-v1", "triton-grpc", "triton-http"]:
        rs = sorted(r for (s2, p, r) in runs if s2 == s and p == proto)
        if not rs:
            continue
        sps = [runs[(s, proto, r)]["steps_per_sec"] for r in rs]
        ratio = [runs[(s, proto, r)]["steps_per_sec"] / runs[(s, "gru-v1", r)]["steps_per_sec"] for r in rs]
        p50 = [runs[(s, proto, r)]["latency"]["p50_us"] for r in rs]
        p99 = [runs[(s, proto, r)]["latency"]["p99_us"] for r in rs]
        err = sum(runs[(s, proto, r)]["errors"] for r in rs)
        print(f"| {proto} | {', '.join(f'{x/1000:.1f}k' for x in sps)} | "
              f"{', '.join(f'{x:.2f}' for x in ratio)} (**{statistics.median(ratio):.2f}**) | "
              f"{', '.join(f'{x:.0f}' for x in p50)} | {', '.join(f'{x:.0f}' for x in p99)} | {err} |")
