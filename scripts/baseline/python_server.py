#!/usr/bin/env python3
"""The server a user would otherwise write: grpcio + PyTorch, with or without a micro-batcher.

A plain Python gRPC server for the subset of `gru.v1.GruService` that
`examples/loadgen/` uses (GetModel, OpenSession, StepStream, plus Step and
CloseSession), backed by one `torch.nn.GRU` on the CPU. Each session's hidden
state lives in a dict. In the `thread` and `aio` modes each message's k steps
run through `nn.GRU` on their own (batch 1) — NO cross-session batching, which
is what a hand-written server does unless someone builds a batcher. The
`batch` mode is that batcher, kept simple: the fairer peer. It is the
baseline gru-serve is compared with in BENCHMARKS.md ("Serving").

Stubs come from proto/ through grpcio-tools: run scripts/baseline/gen_stubs.sh
first (they are written to scripts/baseline/_gen/, not committed).

    scripts/baseline/gen_stubs.sh
    .venv/bin/python scripts/baseline/python_server.py --port 50052 --torch-threads 1
    target/release/examples/loadgen --target http://127.0.0.1:50052 --sessions 256 --k 1

Model: a randomly initialised nn.GRU(input_size, hidden_size, num_layers,
batch_first=True), no head: each step's output is the top layer's h, as the
in-process model of the load generator. Three server styles (`--mode`):

- `thread` (default): `grpc.server(ThreadPoolExecutor(max_workers))`, the
  grpcio tutorial's server. A bidi stream holds one pool thread for its whole
  life, so `--max-workers` must exceed the number of concurrent streams.
  PyTorch releases the GIL inside its kernels, so two streams can overlap a
  little on two cores.
- `aio`: `grpc.aio`, one asyncio event loop; the GRU runs on the loop thread.
- `batch`: `grpc.aio` plus an asyncio micro-batcher (`MicroBatcher`): the
  pending steps of all sessions — whatever is waiting when the compute thread
  is free, up to `--max-batch`, with no waiting window for a lone request, as
  gru-serve's worker — run as one batched `nn.GRU` call on one compute
  thread. A stream's messages are pipelined (replies in order), as gru-serve's
  StepStream does. Same GRU, same replies and errors as the other modes
  (scripts/baseline/check_modes.py compares two servers).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
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
    DESCRIPTION = "Python baseline (grpcio + torch.nn.GRU, no batching)"

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
            description=self.DESCRIPTION,
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

    def _parse(self, req: pb.StepRequest) -> tuple[Session, np.ndarray] | pb.StepResponse:
        """The session and the [k, input] inputs of a step, or its error reply."""
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
        return s, np.asarray(m.values, dtype=np.float32).reshape(k, cols)

    def _reply(self, req: pb.StepRequest, y: torch.Tensor, start: int) -> pb.StepResponse:
        """The reply to one message; y is its [k, hidden] outputs."""
        k = y.shape[0]
        return pb.StepResponse(
            session_id=req.session_id,
            request_id=req.request_id,
            ok=pb.StepResult(
                outputs=pb.Matrix(rows=k, cols=self.hidden_size, values=y.reshape(-1).tolist()),
                start_step=start,
                next_step=start + k,
            ),
        )

    def _step(self, req: pb.StepRequest) -> pb.StepResponse:
        p = self._parse(req)
        if isinstance(p, pb.StepResponse):
            return p
        s, x = p
        with s.lock:
            with torch.inference_mode():
                y, h = self.gru(torch.from_numpy(x).unsqueeze(0), s.h)  # y: [1, k, hidden]
            s.h = h
            start = s.step
            s.step += x.shape[0]
        return self._reply(req, y[0], start)

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

class _Job:
    __slots__ = ("session", "req", "x", "reply")

    def __init__(self, session: Session, req: pb.StepRequest, x: np.ndarray, reply: asyncio.Future):
        self.session = session
        self.req = req
        self.x = x  # [k, input]
        self.reply = reply


class MicroBatcher:
    """Runs the pending steps of all sessions as one batched nn.GRU call.

    Like gru-serve's worker: whatever is waiting when the compute thread is
    free (up to max_batch sessions, one message per session, in arrival
    order) becomes one batch; a lone request runs at once (no waiting window).
    The GRU runs on one compute thread so the event loop keeps reading while
    torch computes (torch releases the GIL in its kernels).
    """

    def __init__(self, servicer: GruServicer, max_batch: int, torch_threads: int):
        self.servicer = servicer
        self.max_batch = max(1, max_batch)
        self.pending: collections.deque[_Job] = collections.deque()
        self.wake = asyncio.Event()
        # set_num_threads again on the compute thread: torch's thread count is
        # set per calling thread.
        self.pool = futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="gru-compute",
            initializer=torch.set_num_threads,
            initargs=(torch_threads,),
        )
        self.batches = 0
        self.steps = 0

    def submit(self, session: Session, req: pb.StepRequest, x: np.ndarray) -> asyncio.Future:
        reply = asyncio.get_running_loop().create_future()
        self.pending.append(_Job(session, req, x, reply))
        self.wake.set()
        return reply

    def _take(self) -> list[_Job]:
        """One batch: at most one job per session (a later one must see the
        earlier one's h), the rest stay queued in order; abandoned jobs dropped."""
        batch, seen, rest = [], set(), collections.deque()
        while self.pending:
            j = self.pending.popleft()
            if j.reply.done():  # cancelled: the client has gone
                continue
            if len(batch) < self.max_batch and id(j.session) not in seen:
                batch.append(j)
            else:
                rest.append(j)
            seen.add(id(j.session))
        self.pending = rest
        return batch

    def _compute(self, batch: list[_Job]) -> list[pb.StepResponse]:
        """On the compute thread: one nn.GRU call per distinct k (the load
        generator sends one k, so one call), h gathered and scattered by session."""
        by_k: dict[int, list[int]] = {}
        for i, j in enumerate(batch):
            by_k.setdefault(j.x.shape[0], []).append(i)
        replies: list[pb.StepResponse | None] = [None] * len(batch)
        for k, idx in by_k.items():
            jobs = [batch[i] for i in idx]
            x = torch.from_numpy(np.stack([j.x for j in jobs]))  # [B, k, input]
            h0 = torch.cat([j.session.h for j in jobs], dim=1)  # [layers, B, hidden]
            with torch.inference_mode():
                y, h = self.servicer.gru(x, h0)  # y: [B, k, hidden]
            for b, (i, j) in enumerate(zip(idx, jobs)):
                s = j.session
                s.h = h[:, b : b + 1].clone()
                start = s.step
                s.step += k
                replies[i] = self.servicer._reply(j.req, y[b], start)
        self.batches += 1
        self.steps += len(batch)
        return replies

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                batch = self._take()
                if not batch:
                    continue
                try:
                    replies = await loop.run_in_executor(self.pool, self._compute, batch)
                except Exception as e:  # reported to each caller as UNKNOWN
                    for j in batch:
                        if not j.reply.done():
                            j.reply.set_exception(e)
                    continue
                for j, r in zip(batch, replies):
                    if not j.reply.done():
                        j.reply.set_result(r)


class BatchGruServicer(AioGruServicer):
    """grpc.aio handlers whose steps go through the MicroBatcher.

    A stream's messages are read as they come and submitted in arrival order
    (one session's messages apply in order); up to STREAM_MAX_IN_FLIGHT of
    them wait for their replies at once, and the replies go back in order —
    as gru-serve's StepStream does, so 256 sessions on 16 streams can fill a
    batch."""

    DESCRIPTION = "Python baseline (grpc.aio + torch.nn.GRU, asyncio micro-batcher)"
    STREAM_MAX_IN_FLIGHT = 256

    def __init__(self, name: str, gru: torch.nn.GRU, max_batch: int, torch_threads: int):
        super().__init__(name, gru)
        self.batcher = MicroBatcher(self, max_batch, torch_threads)

    def _submit(self, req: pb.StepRequest) -> asyncio.Future:
        p = self._parse(req)
        if isinstance(p, pb.StepResponse):
            done = asyncio.get_running_loop().create_future()
            done.set_result(p)
            return done
        return self.batcher.submit(p[0], req, p[1])

    async def Step(self, request, context):
        r = await self._submit(request)
        if r.WhichOneof("result") == "error":
            await context.abort(_status(r.error.code), r.error.message)
        return r

    async def StepStream(self, request_iterator, context):
        order: asyncio.Queue = asyncio.Queue()  # reply futures in arrival order; None = end
        in_flight = asyncio.Semaphore(self.STREAM_MAX_IN_FLIGHT)

        async def read() -> None:
            try:
                async for req in request_iterator:
                    await in_flight.acquire()
                    order.put_nowait(self._submit(req))
            finally:
                order.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (reply := await order.get()) is not None:
                r = await reply
                in_flight.release()
                yield r
            await reader  # re-raises a read error
        finally:
            reader.cancel()


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
    ap.add_argument("--mode", choices=["thread", "aio", "batch"], default="thread")
    ap.add_argument(
        "--max-workers",
        type=int,
        default=64,
        help="thread mode: pool size; each open stream holds one thread",
    )
    ap.add_argument(
        "--max-batch",
        type=int,
        default=256,
        help="batch mode: most sessions one batched step gathers (gru-serve's default)",
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
            if args.mode == "batch":
                servicer = BatchGruServicer(args.model, gru, args.max_batch, args.torch_threads)
                batcher = asyncio.create_task(servicer.batcher.run())
            else:
                servicer, batcher = AioGruServicer(args.model, gru), None
            pb_grpc.add_GruServiceServicer_to_server(servicer, server)
            server.add_insecure_port(addr)
            await server.start()
            # SIGTERM stops the server cleanly (batch mode then prints its batch statistics).
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(server.stop(0)))
            print(f"python baseline ({args.mode}, torch threads {args.torch_threads}) on {addr}", flush=True)
            try:
                await server.wait_for_termination()
            finally:
                if batcher is not None:
                    batcher.cancel()
                    b = servicer.batcher
                    mean = b.steps / b.batches if b.batches else 0.0
                    print(f"batches: {b.batches}, session-steps: {b.steps}, mean batch {mean:.1f}", flush=True)

        try:
            asyncio.run(serve())
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
