#!/usr/bin/env python3
"""Checks that two python_server.py instances answer alike (e.g. --mode aio vs --mode batch).

Start both with the same --seed and sizes, then:

    .venv/bin/python scripts/baseline/check_modes.py 127.0.0.1:50052 127.0.0.1:50053

On each server it opens --sessions sessions and sends, on ONE StepStream, all
--rounds messages of every session at once (session i sends k = 1 + i % 3 rows
a message, so a batch mixes k), then a message for an unknown session and
one with the wrong width. It compares every reply between the two servers:
outputs to --tol (a batched product may round differently from a batch-1
one), step indices, request ids and error codes/messages exactly. Exit 1 on
any difference.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "_gen"))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from gru.v1 import gru_pb2 as pb  # noqa: E402
from gru.v1 import gru_pb2_grpc as pb_grpc  # noqa: E402


def run(target: str, sessions: int, rounds: int, seed: int) -> list[pb.StepResponse]:
    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.GruServiceStub(ch)
        info = stub.GetModel(pb.GetModelRequest(model="")).model
        ids = [stub.OpenSession(pb.OpenSessionRequest(model=info.name)).session_id for _ in range(sessions)]
        rng = np.random.default_rng(seed)
        reqs = []
        for r in range(rounds):
            for i, sid in enumerate(ids):
                k = 1 + i % 3
                x = rng.standard_normal((k, info.input_size), dtype=np.float32)
                reqs.append(
                    pb.StepRequest(
                        session_id=sid,
                        request_id=r * sessions + i,
                        inputs=pb.Matrix(rows=k, cols=info.input_size, values=x.reshape(-1).tolist()),
                    )
                )
        one = pb.Matrix(rows=1, cols=info.input_size, values=[0.0] * info.input_size)
        reqs.append(pb.StepRequest(session_id="no-such-session", request_id=10**6, inputs=one))
        reqs.append(
            pb.StepRequest(session_id=ids[0], request_id=10**6 + 1, inputs=pb.Matrix(rows=1, cols=3, values=[0.0] * 3))
        )
        out = list(stub.StepStream(iter(reqs)))
        for sid in ids:
            stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--sessions", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--tol", type=float, default=1e-5)
    args = ap.parse_args()
    ra = run(args.a, args.sessions, args.rounds, args.seed)
    rb = run(args.b, args.sessions, args.rounds, args.seed)
    bad, worst = 0, 0.0
    if len(ra) != len(rb):
        print(f"reply counts differ: {len(ra)} vs {len(rb)}")
        return 1
    for x, y in zip(ra, rb):
        kind = x.WhichOneof("result")
        if kind != y.WhichOneof("result") or x.request_id != y.request_id:
            bad += 1
            print(f"differ: {x} vs {y}")
            continue
        if kind == "error":
            if (x.error.code, x.error.message) != (y.error.code, y.error.message):
                bad += 1
                print(f"error differs: {x.error} vs {y.error}")
            continue
        ox, oy = x.ok, y.ok
        if (ox.start_step, ox.next_step, ox.outputs.rows, ox.outputs.cols) != (
            oy.start_step,
            oy.next_step,
            oy.outputs.rows,
            oy.outputs.cols,
        ):
            bad += 1
            print(f"indices/shape differ for request {x.request_id}")
            continue
        d = float(np.max(np.abs(np.asarray(ox.outputs.values) - np.asarray(oy.outputs.values))))
        worst = max(worst, d)
        if not d <= args.tol:  # fails on NaN too
            bad += 1
            print(f"outputs differ for request {x.request_id}: max |a - b| = {d:.3g}")
    errors = sum(r.WhichOneof("result") == "error" for r in ra)
    print(f"{len(ra)} replies compared ({errors} errors in each), max |a - b| = {worst:.3g}, {bad} differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
