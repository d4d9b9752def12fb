#!/usr/bin/env python3
"""The gru-serve tutorial from Python, with stubs generated from proto/.

    clients/python/gen_stubs.sh                      # once: writes clients/python/_gen/
    python clients/python/tutorial.py stream         # stream a sine through the model `sine`
    python clients/python/tutorial.py train          # train a GRU over gRPC, watch the loss, stream it
    python clients/python/tutorial.py to-pytorch --model sine-tutorial   # served weights -> torch.nn.GRU
    python clients/python/tutorial.py from-pytorch   # a torch.nn.GRU -> served by gru-serve

Every step checks its result and exits non-zero when it is wrong. `stream`
and `train` need requirements.txt; the PyTorch steps also requirements-torch.txt.
"""

import argparse
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import time

try:
    import grpc
    import numpy as np
except ImportError as e:
    sys.exit(f"tutorial.py: missing Python package '{e.name}': "
             "pip install -r clients/python/requirements.txt")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_gen"))
try:
    from gru.v1 import gru_pb2 as pb
    from gru.v1 import gru_pb2_grpc as rpc
except ImportError:
    sys.exit("no generated stubs: run clients/python/gen_stubs.sh first")


def column(values):
    """A steps x 1 Matrix."""
    return pb.Matrix(rows=len(values), cols=1, values=[float(v) for v in values])


def noisy_sine(rng, length):
    """length + 1 samples of a*sin(w t + phase) + noise, as in the Rust examples."""
    amp, w, phase = rng.uniform(0.5, 1.0), rng.uniform(0.1, 0.5), rng.uniform(0, 2 * np.pi)
    t = np.arange(length + 1)
    return (amp * np.sin(w * t + phase) + rng.uniform(-0.05, 0.05, length + 1)).astype(np.float32)


def stream_steps(stub, session_id, xs):
    """Feeds xs[:-1] one step per message over one StepStream; prints and
    returns the predictions of xs[1:]."""
    requests = queue.Queue()
    replies = stub.StepStream(iter(requests.get, None))  # None ends the stream
    predictions = []
    print(f"{'t':>4} {'x_t':>9} {'predicted':>11} {'x_{t+1}':>11}")
    for t, x in enumerate(xs[:-1]):
        requests.put(pb.StepRequest(session_id=session_id, inputs=column([x]),
                                    start_step=t, has_start_step=True))
        reply = next(replies)
        if reply.WhichOneof("result") != "ok":
            sys.exit(f"step {t}: error {reply.error.code}: {reply.error.message}")
        predictions.append(reply.ok.outputs.values[0])
        print(f"{t:>4} {x:>9.4f} {predictions[-1]:>11.4f} {xs[t + 1]:>11.4f}")
    requests.put(None)
    return np.array(predictions, dtype=np.float32)


def check(what, value, bound):
    print(f"{what}: {value:.6g} (bound {bound})")
    if not value <= bound:
        sys.exit(f"FAILED: {what} {value:.6g} is above the bound {bound}")


def cmd_stream(args, channel):
    stub = rpc.GruServiceStub(channel)
    info = stub.GetModel(pb.GetModelRequest(model=args.model)).model
    print(f"model {info.name} v{info.version}: input {info.input_size}, hidden {info.hidden_size}, "
          f"layers {info.num_layers}, {pb.ResetMode.Name(info.reset_mode)}")
    session = stub.OpenSession(pb.OpenSessionRequest(model=args.model))
    xs = 0.8 * np.sin(0.3 * np.arange(args.steps + 1))
    predictions = stream_steps(stub, session.session_id, xs)
    stub.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))
    mse = float(np.mean((predictions[args.warmup:] - xs[args.warmup + 1:]) ** 2))
    check("MSE after the warm-up", mse, args.max_mse)


def cmd_train(args, channel):
    training, serving = rpc.TrainingServiceStub(channel), rpc.GruServiceStub(channel)
    rng = np.random.default_rng(1)
    sequences = []
    for _ in range(1000):
        xs = noisy_sine(rng, int(rng.integers(20, 61)))
        sequences.append(pb.TrainingSequence(inputs=column(xs[:-1]), targets=column(xs[1:])))
    job = training.StartTraining(pb.StartTrainingRequest(
        model=args.model,
        new_model=pb.ModelSpec(input_size=1, hidden_size=32, num_layers=1, output_size=1,
                               reset_mode=pb.RESET_MODE_AFTER_MATMUL, task=pb.TASK_REGRESSION,
                               description="Tutorial (Python): next-step prediction of a noisy sine"),
        hyperparameters=pb.Hyperparameters(epochs=args.epochs, batch_size=32, learning_rate=0.01,
                                           schedule=pb.LEARNING_RATE_SCHEDULE_COSINE,
                                           min_learning_rate=0.0005, validation_fraction=0.1,
                                           patience=5, seed=7),
        sequences=sequences))
    print(f"job {job.job_id} ({job.num_sequences} sequences)")
    version = None
    for event in training.WatchTraining(pb.WatchTrainingRequest(job_id=job.job_id, from_start=True)):
        if event.WhichOneof("event") == "progress" and event.progress.epoch_done:
            p = event.progress
            print(f"epoch {p.epoch:>2}/{p.epochs}  train loss {p.train_loss:.5f}  "
                  f"validation loss {p.validation_loss:.5f}  ETA {p.eta_seconds:.1f} s")
        elif event.WhichOneof("event") == "job":
            j = event.job
            if j.state == pb.JOB_STATE_SUCCEEDED:
                version = j.result.version
                print(f"published {j.result.model} v{version} after {j.result.epochs_run} epochs")
            elif j.state in (pb.JOB_STATE_FAILED, pb.JOB_STATE_CANCELLED, pb.JOB_STATE_INTERRUPTED):
                sys.exit(f"FAILED: job ended {pb.JobState.Name(j.state)}: {j.error}")
    if version is None:
        sys.exit("FAILED: the watch ended before the job did")

    xs = noisy_sine(np.random.default_rng(12345), 80)  # held out: another seed
    session = serving.OpenSession(pb.OpenSessionRequest(model=args.model, version=version))
    predictions = stream_steps(serving, session.session_id, xs)
    serving.CloseSession(pb.CloseSessionRequest(session_id=session.session_id))
    mse = float(np.mean((predictions[args.warmup:] - xs[args.warmup + 1:]) ** 2))
    check("held-out MSE after the warm-up", mse, args.max_mse)


# ------------------------------------------------------------------ PyTorch

def torch_net(input_size, hidden_size, num_layers, output_size):
    """nn.GRU (batch_first) + nn.Linear head, under the names the server
    reads and writes: gru.weight_ih_l0 ... and head.weight, head.bias."""
    import torch
    torch.set_num_threads(1)  # a net this small only loses time to more threads

    class GruRegressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(input_size, hidden_size, num_layers, batch_first=True)
            self.head = torch.nn.Linear(hidden_size, output_size)

        def forward(self, x):  # x: [batch, steps, input] -> [batch, steps, output]
            return self.head(self.gru(x)[0])

    return GruRegressor()


def predict(stub, model, version, seqs):
    """The server's outputs for each sequence ([steps, input] arrays)."""
    reply = stub.Predict(pb.PredictRequest(model=model, version=version, sequences=[
        pb.PredictSequence(inputs=pb.Matrix(rows=s.shape[0], cols=s.shape[1],
                                            values=s.ravel().tolist()))
        for s in seqs]))
    return [np.array(o.outputs.values, dtype=np.float32).reshape(o.outputs.rows, o.outputs.cols)
            for o in reply.outputs]


def compare(stub, model, version, net, input_size, tol=1e-5):
    """Runs the same sequences through torch and the server's Predict."""
    import torch
    rng = np.random.default_rng(3)
    seqs = [rng.uniform(-1, 1, (n, input_size)).astype(np.float32) for n in (50, 17)]
    served = predict(stub, model, version, seqs)
    with torch.no_grad():
        ours = [net(torch.from_numpy(s)[None])[0].numpy() for s in seqs]
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(served, ours))
    check(f"max |PyTorch - gru-serve| over {sum(len(s) for s in seqs)} steps", diff, tol)


def cmd_to_pytorch(args, channel):
    import torch
    from safetensors.torch import load_file
    stub = rpc.GruServiceStub(channel)
    version = args.version or stub.GetModel(pb.GetModelRequest(model=args.model)).model.version
    out = os.path.join(tempfile.mkdtemp(prefix="gru-export-"), f"{args.model}-{version}.safetensors")
    cmd = [args.gru_serve, "export", "--model-dir", args.model_dir, "--model", args.model,
           "--version", str(version), "--out", out]
    print("$", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"FAILED: gru-serve export: {done.stderr.strip() or done.stdout.strip()}")
    config = json.loads(done.stdout)
    print("config:", json.dumps(config))
    state = load_file(out)
    print("state dict:", {k: list(v.shape) for k, v in state.items()})
    net = torch_net(config["input_size"], config["hidden_size"], config["num_layers"],
                    config["output_size"])
    net.load_state_dict(state)  # strict: every key and shape must match
    compare(stub, args.model, version, net, config["input_size"])


def cmd_from_pytorch(args, channel):
    import torch
    from safetensors.torch import save_file
    stub = rpc.GruServiceStub(channel)

    # A small two-layer GRU, trained in PyTorch on the noisy-sine task.
    torch.manual_seed(0)
    net = torch_net(1, 16, 2, 1)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    rng = np.random.default_rng(4)
    started = time.monotonic()
    for it in range(1, args.iterations + 1):
        batch = torch.from_numpy(np.stack([noisy_sine(rng, 40) for _ in range(32)]))[..., None]
        loss = torch.nn.functional.mse_loss(net(batch[:, :-1]), batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it % 50 == 0:
            print(f"PyTorch iteration {it:>3}: loss {loss.item():.5f}")
    print(f"trained in {time.monotonic() - started:.1f} s")

    # Drop it into the model repository as the next version of args.model:
    # written in a dot folder (the server ignores those), then renamed.
    model_dir = os.path.join(args.model_dir, args.model)
    os.makedirs(model_dir, exist_ok=True)
    versions = [int(d) for d in os.listdir(model_dir) if d.isdigit()]
    version = max(versions, default=0) + 1
    tmp = tempfile.mkdtemp(prefix=".incoming-", dir=model_dir)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              os.path.join(tmp, "pytorch.safetensors"))
    with open(os.path.join(tmp, "serving.json"), "w") as f:
        json.dump({"description": "Tutorial: a torch.nn.GRU trained in PyTorch on noisy sines "
                                  "(x_t in, x_{t+1} out)",
                   "task": "regression", "gru_prefix": "gru.", "head_prefix": "head."}, f)
    os.chmod(tmp, 0o755)
    os.rename(tmp, os.path.join(model_dir, str(version)))
    print(f"wrote {model_dir}/{version}/pytorch.safetensors + serving.json")

    # The server picks new version folders up every --model-poll.
    written = time.monotonic()
    deadline = written + args.wait_secs
    while True:
        try:
            info = stub.GetModel(pb.GetModelRequest(model=args.model, version=version)).model
            break
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                sys.exit(f"FAILED: {args.model} v{version} was not served within "
                         f"{args.wait_secs} s (is the server running with --model-poll?): "
                         f"{e.details()}")
            time.sleep(0.2)
    print(f"served after {time.monotonic() - written:.1f} s: {info.name} v{info.version} "
          f"from {info.source_format}, layers {info.num_layers}, hidden {info.hidden_size}, "
          f"{pb.ResetMode.Name(info.reset_mode)}")
    if info.source_format != "pytorch" or info.num_layers != 2 or info.hidden_size != 16:
        sys.exit("FAILED: the served model is not the one written")
    compare(stub, args.model, version, net, 1)


def parse_addr(addr):
    """host:port, http://host:port or https://host:port -> (target, use TLS)."""
    for scheme, tls in (("http://", False), ("https://", True)):
        if addr.startswith(scheme):
            return addr[len(scheme):].rstrip("/"), tls
    if "://" in addr:
        sys.exit(f"tutorial.py: address '{addr}': use host:port, http://host:port or https://host:port")
    return addr, False


def main():
    # --addr may come before or after the subcommand (a parent parser whose
    # default is SUPPRESS, so the subcommand's absent flag does not reset it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--addr", default=argparse.SUPPRESS,
                        help="the server: host:port, http://host:port or https://host:port "
                             "(default 127.0.0.1:50051, or $GRU_ADDR)")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("stream", parents=[common], help="stream a sine through the default model")
    p.add_argument("--model", default="sine")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-mse", type=float, default=0.002)
    p = sub.add_parser("train", parents=[common],
                       help="train over gRPC, watch the loss, stream the result")
    p.add_argument("--model", default="sine-tutorial")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--max-mse", type=float, default=0.006)
    p = sub.add_parser("to-pytorch", parents=[common],
                       help="export served weights into torch.nn.GRU and compare")
    p.add_argument("--model", default="sine")
    p.add_argument("--version", type=int, default=0, help="0 = the latest")
    p.add_argument("--model-dir", default=os.path.join(ROOT, "models"))
    p.add_argument("--gru-serve", default=shutil.which("gru-serve")
                   or os.path.join(ROOT, "target", "release", "gru-serve"))
    p = sub.add_parser("from-pytorch", parents=[common], help="serve a torch.nn.GRU and compare")
    p.add_argument("--model", default="sine-torch")
    p.add_argument("--model-dir", default=os.path.join(ROOT, "models"))
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--wait-secs", type=float, default=30)
    args = parser.parse_args()
    # Resolved here: a default set on the parser would be copied over a
    # value given before the subcommand when argparse merges the subparser's.
    args.addr = getattr(args, "addr", None) or os.environ.get("GRU_ADDR", "127.0.0.1:50051")
    if args.command in ("to-pytorch", "from-pytorch"):
        try:
            import torch  # noqa: F401  (checked up front: one clear line, not a traceback)
        except ImportError:
            sys.exit(f"tutorial.py: '{args.command}' needs PyTorch: "
                     "pip install -r clients/python/requirements-torch.txt")
    target, tls = parse_addr(args.addr)
    options = [("grpc.max_receive_message_length", 64 << 20)]
    channel = (grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
               if tls else grpc.insecure_channel(target, options=options))
    with channel as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=10)
        except grpc.FutureTimeoutError:
            sys.exit(f"tutorial.py: no gru-serve answering at {args.addr} within 10 s "
                     "(is it running? start one with: cargo run --release)")
        {"stream": cmd_stream, "train": cmd_train, "to-pytorch": cmd_to_pytorch,
         "from-pytorch": cmd_from_pytorch}[args.command](args, ch)


if __name__ == "__main__":
    main()
