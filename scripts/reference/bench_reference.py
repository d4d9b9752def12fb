#!/usr/bin/env python3
"""Reference CPU benchmarks (PyTorch / onnxruntime) for the gru-serve model and training cores.

    .venv/bin/python scripts/reference/bench_reference.py --threads 1 --json scripts/reference/results-threads1.json
    .venv/bin/python scripts/reference/bench_reference.py --threads 2 --json scripts/reference/results-threads2.json

Options: --threads N (default 1): OMP/MKL/OpenBLAS env vars are set BEFORE torch is imported,
then torch.set_num_threads(N) and onnxruntime intra_op_num_threads=N (inter_op 1, sequential).
--quick: fewer repetitions. --json PATH: also write the results as JSON.

Timing: time.perf_counter around each call, warmup calls first, the MEDIAN over the
repetitions is reported (>= 20 reps, except the B=8/T=1000 training step: >= 5).
All f32, CPU. Inputs uniform random; weights are the frameworks' default init.

Inference ("model core"), I=64, H=256, 1 layer, no head:
  one step, B=1 and B=64:
    torch: nn.GRUCell(64, 256)(x, h) under torch.inference_mode()
    ort:   one ONNX GRU node, T=1, layout 0, linear_before_reset 1 and 0, no sequence_lens
           (sess.run with numpy inputs, i.e. including onnxruntime's per-call overhead)
  full sequence T=100, B=1 and B=64, reported as total and µs per step (total / 100):
    torch: nn.GRU(64, 256, batch_first=True)(x, h0) under torch.inference_mode()
    ort:   same GRU node with T=100, LBR=1 and LBR=0
Training ("training core"): nn.GRU(I, H, batch_first=True) + nn.Linear(H, 1), MSE loss,
torch.optim.AdamW(lr=1e-3); one step = zero_grad, forward, loss, backward, optimizer step.
  B=32 T=50 I=16 H=128; B=1 T=200 I=64 H=256; B=8 T=1000 I=64 H=256.
  Each training case runs in a fresh child process (same thread settings) so that its
  peak-RSS figure is its own: rss_delta = ru_maxrss after all steps minus ru_maxrss after
  imports, before the model/optimizer/data are built (resource.getrusage; tracemalloc
  does not see torch's native allocations, so it is not used).
"""

import argparse
import json
import os
import subprocess
import sys

TRAIN_CASES = [
    dict(B=32, T=50, I=16, H=128),
    dict(B=1, T=200, I=64, H=256),
    dict(B=8, T=1000, I=64, H=256),
]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write results to this JSON file")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--_child-train", dest="child_train", default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


ARGS = parse_args()
for _v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_v] = str(ARGS.threads)

import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(ARGS.threads)


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def bench(fn, reps, warmup):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return dict(median_s=statistics.median(times), min_s=min(times), reps=reps, warmup=warmup)


# ----------------------------------------------------------------------------------------
# training (child process)
# ----------------------------------------------------------------------------------------
def child_train(case, quick):
    B, T, I, H = case["B"], case["T"], case["I"], case["H"]
    big = T >= 1000
    reps = (5 if quick else 10) if big else (20 if quick else 30)
    warmup = 1 if big else 3
    rss0 = maxrss_mib()
    torch.manual_seed(0)
    gru = nn.GRU(I, H, batch_first=True)
    head = nn.Linear(H, 1)
    params = list(gru.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3)
    x = torch.rand(B, T, I) * 2 - 1
    target = torch.rand(B, T, 1) * 2 - 1
    loss_fn = nn.MSELoss()

    def step():
        opt.zero_grad(set_to_none=True)
        out, _ = gru(x)
        loss = loss_fn(head(out), target)
        loss.backward()
        opt.step()

    r = bench(step, reps, warmup)
    rss1 = maxrss_mib()
    r.update(rss_before_mib=rss0, rss_after_mib=rss1, rss_delta_mib=rss1 - rss0)
    return r


# ----------------------------------------------------------------------------------------
# inference
# ----------------------------------------------------------------------------------------
def ort_gru_session(I, H, lbr, threads):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k = 1.0 / np.sqrt(H)
    W = rng.uniform(-k, k, (1, 3 * H, I)).astype(np.float32)
    R = rng.uniform(-k, k, (1, 3 * H, H)).astype(np.float32)
    Bb = rng.uniform(-k, k, (1, 6 * H)).astype(np.float32)
    node = helper.make_node("GRU", ["X", "W", "R", "B", "", "initial_h"], ["Y", "Y_h"],
                            direction="forward", hidden_size=H, linear_before_reset=lbr, layout=0)
    graph = helper.make_graph(
        [node], "gru_bench",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["seq", "batch", I]),
         helper.make_tensor_value_info("initial_h", TensorProto.FLOAT, [1, "batch", H])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["seq", 1, "batch", H]),
         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, [1, "batch", H])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(R, "R"), numpy_helper.from_array(Bb, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def run_inference(threads, quick):
    I, H = 64, 256
    step_reps, step_warm = (100, 20) if quick else (300, 50)
    seq_reps, seq_warm = (20, 3) if quick else (50, 5)
    T = 100
    res = []
    torch.manual_seed(0)
    cell = nn.GRUCell(I, H).eval()
    gru = nn.GRU(I, H, batch_first=True).eval()
    sess = {lbr: ort_gru_session(I, H, lbr, threads) for lbr in (1, 0)}
    rng = np.random.default_rng(1)

    for B in (1, 64):
        x = torch.rand(B, I) * 2 - 1
        h = torch.rand(B, H) * 2 - 1

        def f():
            with torch.inference_mode():
                cell(x, h)
        r = bench(f, step_reps, step_warm)
        res.append(dict(suite="inference", case="one step", B=B, T=1, I=I, H=H,
                        impl="torch nn.GRUCell", **r, per_step_s=r["median_s"]))
        for lbr in (1, 0):
            feeds = {"X": rng.uniform(-1, 1, (1, B, I)).astype(np.float32),
                     "initial_h": rng.uniform(-1, 1, (1, B, H)).astype(np.float32)}
            s = sess[lbr]
            r = bench(lambda: s.run(None, feeds), step_reps, step_warm)
            res.append(dict(suite="inference", case="one step", B=B, T=1, I=I, H=H,
                            impl=f"ort GRU op LBR={lbr} (T=1)", **r, per_step_s=r["median_s"]))

    for B in (1, 64):
        x = torch.rand(B, T, I) * 2 - 1
        h0 = torch.rand(1, B, H) * 2 - 1

        def g():
            with torch.inference_mode():
                gru(x, h0)
        r = bench(g, seq_reps, seq_warm)
        res.append(dict(suite="inference", case=f"sequence T={T}", B=B, T=T, I=I, H=H,
                        impl="torch nn.GRU", **r, per_step_s=r["median_s"] / T))
        for lbr in (1, 0):
            feeds = {"X": rng.uniform(-1, 1, (T, B, I)).astype(np.float32),
                     "initial_h": rng.uniform(-1, 1, (1, B, H)).astype(np.float32)}
            s = sess[lbr]
            r = bench(lambda: s.run(None, feeds), seq_reps, seq_warm)
            res.append(dict(suite="inference", case=f"sequence T={T}", B=B, T=T, I=I, H=H,
                            impl=f"ort GRU op LBR={lbr}", **r, per_step_s=r["median_s"] / T))
    return res


def run_training(threads, quick):
    res = []
    for case in TRAIN_CASES:
        cmd = [sys.executable, os.path.abspath(__file__), "--threads", str(threads),
               "--_child-train", json.dumps(case)] + (["--quick"] if quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        res.append(dict(suite="training", case="train step", impl="torch GRU+Linear+MSE+AdamW",
                        **case, **r, per_step_s=r["median_s"] / case["T"]))
        print(f"  training {case} done: median {r['median_s'] * 1e3:.1f} ms", file=sys.stderr)
    return res


def fmt_time(s):
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} µs"


def table(results):
    lines = ["| suite | case | B | T | I | H | impl | median | µs/step | reps | peak RSS Δ |",
             "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for r in results:
        rss = f"{r['rss_delta_mib']:.0f} MiB" if "rss_delta_mib" in r else ""
        lines.append(f"| {r['suite']} | {r['case']} | {r['B']} | {r['T']} | {r['I']} | {r['H']} | {r['impl']} "
                     f"| {fmt_time(r['median_s'])} | {r['per_step_s'] * 1e6:.1f} | {r['reps']} | {rss} |")
    return "\n".join(lines)


def main():
    if ARGS.child_train:
        print(json.dumps(child_train(json.loads(ARGS.child_train), ARGS.quick)))
        return
    import onnxruntime as ort

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    meta = dict(threads=ARGS.threads, quick=ARGS.quick, torch=torch.__version__, onnxruntime=ort.__version__,
                numpy=np.__version__, python=platform.python_version(), cpu=cpu, nproc=os.cpu_count(),
                torch_num_threads=torch.get_num_threads(), loadavg_start=os.getloadavg(),
                time=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                notes="medians over reps (perf_counter); one-step torch = nn.GRUCell; ORT timed via "
                      "InferenceSession.run with numpy inputs; training rss_delta = ru_maxrss delta "
                      "in a fresh child process (before model creation -> after all steps)")
    if meta["loadavg_start"][0] > 0.5:
        print(f"WARNING: 1-min load average {meta['loadavg_start'][0]:.2f} at start: timings may be noisy",
              file=sys.stderr)
    t0 = time.perf_counter()
    results = run_inference(ARGS.threads, ARGS.quick)
    print(f"  inference done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    results += run_training(ARGS.threads, ARGS.quick)
    meta["loadavg_end"] = os.getloadavg()
    meta["wall_s"] = round(time.perf_counter() - t0, 1)
    if meta["loadavg_end"][0] > ARGS.threads + 0.75:
        print(f"WARNING: 1-min load average {meta['loadavg_end'][0]:.2f} at the end (> threads + 0.75): "
              "something else ran during the benchmark", file=sys.stderr)
    print(f"threads={ARGS.threads} quick={ARGS.quick} torch {torch.__version__} onnxruntime {ort.__version__} "
          f"cpu '{cpu}' loadavg start {meta['loadavg_start']} end {meta['loadavg_end']} wall {meta['wall_s']} s\n")
    print(table(results))
    if ARGS.json:
        with open(ARGS.json, "w") as f:
            json.dump(dict(meta=meta, results=results), f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
