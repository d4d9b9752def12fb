#!/usr/bin/env python3
"""The server a user would otherwise write: grpcio + PyTorch, no batching.

A plain Python gRPC server for the subset of `gru.v1.GruService` that
`examples/loadgen.rs` uses (GetModel, OpenSession, StepStream, plus Step and
CloseSession), backed by one `torch.nn.GRU` on the CPU. Each session's hidden
state lives in a dict; each message's k steps run through `nn.GRU` on their
own (batch 1) — there is NO cross-session batching, which is what a
hand-written server does unless someone builds a batcher. It is the baseline
gru-serve is compared with in BENCHMARKS.md ("Serving").

Stubs come from proto/ through grpcio-tools: run scripts/baseline/gen_stubs.sh
first (they are written to scripts/baseline/_gen/, not committed).

    scripts/baseline/gen_stubs.sh
    .venv/bin/python scripts/baseline/python_server.py --port 50052 --torch-threads 1
    target/release/examples/loadgen --target http://127.0.0.1:50052 --sessions 256 --k 1

Model: a randomly initialised nn.GRU(input_size, hidden_size, num_layers,
batch_first=True), no head: each step's output is the top layer's h, as the
in-process model of the load generator. Two server styles (`--mode`):

- `thread` (default): `grpc.server(ThreadPoolExecutor(max_workers))`, the
  grpcio tutorial's server. A bidi stream holds one pool thread for its whole
  life, so `--max-workers` must exceed the number of concurrent streams.
  PyTorch releases the GIL inside its kernels, so two streams can overlap a
  little on two cores.
- `aio`: `grpc.aio`, one asyncio event loop; the GRU runs on the loop thread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import uuid
from concurrent import futures

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_gen"))

try:
    import grpc
    from gru.v1 import gru_pb2 as pb
    from gru.v1 import gru_pb2_grpc as pb_grpc
except ImportError as e:  # pragma: no cover - a setup message, not logic
    sys.exit(
        f"cannot import the generated stubs or grpcio ({e}); run scripts/baseline/gen_stubs.sh "
        "after `pip install -r scripts/baseline/requirements.txt`"
    )

import numpy as np
import torch

# google.rpc.Code values used in StepError replies.
INVALID_ARGUMENT, NOT_FOUND = 3, 5


class Session:
    __slots__ = ("h", "step", "lock")

    def __init__(self, h: torch.Tensor):
        self.h = h  # [layers, 1, hidden]
        self.step = 0
        self.lock = threading.Lock()


class GruServicer(pb_grpc.GruServiceServicer):
    def __init__(self, name: str, gru: torch.nn.GRU):
        self.name = name
        self.gru = gru
        self.input_size = gru.input_size
        self.hidden_size = gru.hidden_size
        self.num_layers = gru.num_layers
        self.sessions: dict[str, Session] = {}

    # --- model info -------------------------------------------------------

    def _info(self) -> pb.ModelInfo:
        return pb.ModelInfo(
            name=self.name,
            version=1,
            versions=[1],
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            output_size=self.hidden_size,
            has_head=False,
            reset_mode=pb.RESET_MODE_AFTER_MATMUL,
            task=pb.TASK_REGRESSION,
            dtype="f32",
            num_parameters=sum(p.numel() for p in self.gru.parameters()),
            description="Python baseline (grpcio + torch.nn.GRU, no batching)",
            source_format="pytorch",
        )

    def _model_ok(self, model: str) -> bool:
        return model in ("", self.name)

    # --- the step ---------------------------------------------------------

    def _error(self, req: pb.StepRequest, code: int, message: str) -> pb.StepResponse:
        return pb.StepResponse(
            session_id=req.session_id,
            request_id=req.request_id,
            error=pb.StepError(code=code, message=message),
        )

    def _step(self, req: pb.StepRequest) -> pb.StepResponse:
        s = self.sessions.get(req.session_id)
        if s is None:
            return self._error(req, NOT_FOUND, f"session '{req.session_id}' not found")
        m = req.inputs
        k, cols = m.rows, m.cols
        if k < 1 or cols != self.input_size or len(m.values) != k * cols:
            return self._error(
                req,
                INVALID_ARGUMENT,
                f"inputs: expected k >= 1 rows of {self.input_size} values, "
                f"got {k} x {cols} with {len(m.values)} values",
            )
        x = torch.from_numpy(np.asarray(m.values, dtype=np.float32).reshape(1, k, cols))
        with s.lock:
            with torch.inference_mode():
                y, h = self.gru(x, s.h)  # y: [1, k, hidden]
            s.h = h
            start = s.step
            s.step += k
        return pb.StepResponse(
            session_id=req.session_id,
            request_id=req.request_id,
            ok=pb.StepResult(
                outputs=pb.Matrix(rows=k, cols=self.hidden_size, values=y.reshape(-1).tolist()),
                start_step=start,
                next_step=start + k,
            ),
        )

    # --- rpc handlers (sync) ---------------------------------------------

    def GetModel(self, request, context):
        if not self._model_ok(request.model):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.model}' not found")
        return pb.GetModelResponse(model=self._info())

    def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[self._info()])

    def OpenSession(self, request, context):
        if not self._model_ok(request.model):
            context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.model}' not found")
        sid = uuid.uuid4().hex
        self.sessions[sid] = Session(torch.zeros(self.num_layers, 1, self.hidden_size))
        return pb.OpenSessionResponse(
            session_id=sid, model=self.name, version=1, step_index=0, created=True, ttl_ms=0
        )

    def Step(self, request, context):
        r = self._step(request)
        if r.WhichOneof("result") == "error":
            context.abort(_status(r.error.code), r.error.message)
        return r

    def StepStream(self, request_iterator, context):
        for req in request_iterator:
            yield self._step(req)

    def CloseSession(self, request, context):
        s = self.sessions.pop(request.session_id, None)
        if s is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"session '{request.session_id}' not found")
        return pb.CloseSessionResponse(step_index=s.step)


def _status(n: int) -> grpc.StatusCode:
    return next((c for c in grpc.StatusCode if c.value[0] == n), grpc.StatusCode.UNKNOWN)


class AioGruServicer(GruServicer):
    """The same handlers as coroutines (grpc.aio); compute runs on the loop thread."""

    async def GetModel(self, request, context):
        if not self._model_ok(request.model):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"model '{request.model}' not found")
        return pb.GetModelResponse(model=self._info())

    async def ListModels(self, request, context):
        return pb.ListModelsResponse(models=[self._info()])

    async def OpenSession(self, request, context):
        return GruServicer.OpenSession(self, request, context)

    async def Step(self, request, context):
        r = self._step(request)
        if r.WhichOneof("result") == "error":
            await context.abort(_status(r.error.code), r.error.message)
        return r

    async def StepStream(self, request_iterator, context):
        async for req in request_iterator:
            yield self._step(req)

    async def CloseSession(self, request, context):
        s = self.sessions.pop(request.session_id, None)
        if s is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "session not found")
        return pb.CloseSessionResponse(step_index=s.step)


OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=50052)
    ap.add_argument("--model", default="bench", help="model name served")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads")
    ap.add_argument("--mode", choices=["thread", "aio"], default="thread")
    ap.add_argument(
        "--max-workers",
        type=int,
        default=64,
        help="thread mode: pool size; each open stream holds one thread",
    )
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.torch_threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    gru = torch.nn.GRU(args.input_size, args.hidden_size, args.layers, batch_first=True).eval()
    addr = f"{args.host}:{args.port}"

    if args.mode == "thread":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.max_workers), options=OPTIONS)
        pb_grpc.add_GruServiceServicer_to_server(GruServicer(args.model, gru), server)
        server.add_insecure_port(addr)
        server.start()
        print(f"python baseline ({args.mode}, torch threads {args.torch_threads}) on {addr}", flush=True)
        try:
            server.wait_for_termination()
        except KeyboardInterrupt:
            server.stop(1)
    else:

        async def serve() -> None:
            server = grpc.aio.server(options=OPTIONS)
            pb_grpc.add_GruServiceServicer_to_server(AioGruServicer(args.model, gru), server)
            server.add_insecure_port(addr)
            await server.start()
            print(f"python baseline ({args.mode}, torch threads {args.torch_threads}) on {addr}", flush=True)
            await server.wait_for_termination()

        try:
            asyncio.run(serve())
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
