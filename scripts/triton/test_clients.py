"""Triton's own Python clients (tritonclient.grpc and tritonclient.http)
against a running gru-serve: health, metadata, config, repository, stateless
and sequence inference (unary and over one stream with interleaved
sequences, as Triton's simple_grpc_sequence_stream_infer_client.py), the
refusals, and statistics. Every output is compared with gru.v1's for the
same inputs (<= 1e-6). Run by scripts/triton/run.sh; exits non-zero on the
first failure.

    python test_clients.py --grpc 127.0.0.1:P --http 127.0.0.1:Q --stubs DIR
"""

import argparse
import queue
import sys
import uuid
from functools import partial

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "sine"
TOL = 1e-6


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def close(got, want, what):
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    check(got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}")
    d = np.abs(got - want)
    check(np.all(np.isfinite(got)) and float(d.max(initial=0)) <= TOL,
          f"{what}: max |diff| {d.max(initial=0):.3e} > {TOL}")


def refused(fn, status, needle, what):
    """fn() must raise InferenceServerException with `status` in its status
    and `needle` in its message."""
    try:
        fn()
    except InferenceServerException as e:
        check(status in str(e.status()), f"{what}: status {e.status()!r}, wanted {status} ({e.message()})")
        check(needle in (e.message() or ""), f"{what}: message {e.message()!r} lacks {needle!r}")
        return
    raise AssertionError(f"{what}: no error")


class Reference:
    """gru.v1: the numbers every v2 answer must equal."""

    def __init__(self, addr, stubs):
        sys.path.insert(0, stubs)
        import grpc
        from gru.v1 import gru_pb2, gru_pb2_grpc
        self.pb = gru_pb2
        self.stub = gru_pb2_grpc.GruServiceStub(grpc.insecure_channel(addr))

    def steps(self, rows):
        """rows [T, I] stepped one row per message; outputs [T, O]."""
        pb = self.pb
        sid = self.stub.OpenSession(pb.OpenSessionRequest(model=MODEL)).session_id
        out = []
        for r in rows:
            m = pb.Matrix(rows=1, cols=len(r), values=[float(x) for x in r])
            res = self.stub.Step(pb.StepRequest(session_id=sid, inputs=m)).ok
            out.append(list(res.outputs.values))
        self.stub.CloseSession(pb.CloseSessionRequest(session_id=sid))
        return np.array(out, np.float32)


def seq_input(mod, rows):
    x = np.asarray(rows, np.float32).reshape(1, -1, 1)
    i = mod.InferInput("INPUT", list(x.shape), "FP32")
    i.set_data_from_numpy(x)
    return [i]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--http", required=True)
    ap.add_argument("--stubs", required=True)
    a = ap.parse_args()
    ref = Reference(a.grpc, a.stubs)
    g = grpcclient.InferenceServerClient(a.grpc)
    h = httpclient.InferenceServerClient(a.http)
    rng = np.random.default_rng(7)

    # ---- health, metadata, config, repository
    for c in (g, h):
        check(c.is_server_live() and c.is_server_ready(), "live/ready")
        check(c.is_model_ready(MODEL) and not c.is_model_ready("nope"), "model ready")
    md = g.get_server_metadata(as_json=True)
    check("sequence" in md["extensions"] and "sequence(string_id)" in md["extensions"], md)
    check(h.get_server_metadata()["extensions"] == md["extensions"], "same extensions over HTTP")
    for m in (g.get_model_metadata(MODEL, as_json=True), h.get_model_metadata(MODEL)):
        check(m["versions"] == ["1"], m)
        check([t["name"] for t in m["inputs"]][0] == "INPUT", m)
    gc = g.get_model_config(MODEL, as_json=True)["config"]
    hc = h.get_model_config(MODEL)
    for c in (gc, hc):
        check("sequence_batching" in c, f"sequence_batching in {c}")
        check(int(c["sequence_batching"]["max_sequence_idle_microseconds"]) > 0, c)
    idx = g.get_model_repository_index(as_json=True)["models"]
    check(any(m["name"] == MODEL and m["state"] == "READY" for m in idx), idx)
    check(any(m["name"] == MODEL for m in h.get_model_repository_index()), "http index")
    g.load_model(MODEL)
    h.load_model(MODEL)
    refused(lambda: g.unload_model(MODEL), "UNIMPLEMENTED", "does not unload", "grpc unload")
    refused(lambda: h.unload_model(MODEL), "501", "does not unload", "http unload")

    # ---- stateless: two sequences in one [2, T, 1] request
    x = rng.uniform(-1, 1, (2, 20, 1)).astype(np.float32)
    for mod, c in ((grpcclient, g), (httpclient, h)):
        i = mod.InferInput("INPUT", list(x.shape), "FP32")
        i.set_data_from_numpy(x)
        y = c.infer(MODEL, [i]).as_numpy("OUTPUT")
        for n in range(2):
            close(y[n], ref.steps(x[n]), f"stateless [{n}] via {mod.__name__}")

    # ---- a 50-step sequence through infer with START/END, gRPC and HTTP
    rows = rng.uniform(-1, 1, (50, 1)).astype(np.float32)
    want = ref.steps(rows)
    for mod, c, sid in ((grpcclient, g, 42), (httpclient, h, 43)):
        got = []
        for t in range(50):
            r = c.infer(MODEL, seq_input(mod, rows[t]), sequence_id=sid,
                        sequence_start=(t == 0), sequence_end=(t == 49))
            got.append(r.as_numpy("OUTPUT").reshape(-1))
        close(np.array(got), want, f"50-step sequence via {mod.__name__}")

    # ---- interleaved sequences on one stream (two int ids, one UUID)
    results = queue.Queue()
    g.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), results))
    ids = [1000, 1001, str(uuid.uuid4())]
    data = [rng.uniform(-1, 1, (8, 1)).astype(np.float32) for _ in ids]
    sent = []
    for t in range(8):
        for n, sid in enumerate(ids):
            rid = f"{n}/{t}"
            g.async_stream_infer(MODEL, seq_input(grpcclient, data[n][t]), request_id=rid,
                                 sequence_id=sid, sequence_start=(t == 0), sequence_end=(t == 7))
            sent.append(rid)
        if t == 3:
            # A sequence never started: an in-band error, the stream stays open.
            g.async_stream_infer(MODEL, seq_input(grpcclient, data[0][t]), request_id="bad",
                                 sequence_id=4242)
            sent.append("bad")
    got = [[] for _ in ids]
    for rid in sent:
        result, error = results.get(timeout=30)
        if rid == "bad":
            check(error is not None and "must specify the START flag" in error.message(), f"bad: {error}")
            continue
        check(error is None, f"{rid}: {error}")
        resp = result.get_response()
        check(resp.id == rid, f"stream order: {resp.id} != {rid}")
        got[int(rid.split("/")[0])].append(result.as_numpy("OUTPUT").reshape(-1))
    g.stop_stream()
    for n, sid in enumerate(ids):
        close(np.array(got[n]), ref.steps(data[n]), f"stream sequence {sid}")

    # ---- refusals; sequence 77 lives through all of them
    keep = rng.uniform(-1, 1, (3, 1)).astype(np.float32)
    kept = [g.infer(MODEL, seq_input(grpcclient, keep[0]), sequence_id=77,
                    sequence_start=True).as_numpy("OUTPUT").reshape(-1)]
    one = seq_input(grpcclient, [0.5])
    refused(lambda: g.infer(MODEL, one, sequence_id=5), "INVALID_ARGUMENT",
            "must specify the START flag", "no START")
    refused(lambda: g.infer("nope", one), "NOT_FOUND", "unknown model", "unknown model")
    refused(lambda: g.infer(MODEL, one, model_version="7"), "NOT_FOUND", "version 7", "unknown version")
    refused(lambda: g.infer(MODEL, one, model_version="x"), "INVALID_ARGUMENT",
            "integral value > 0", "bad version")
    f64 = grpcclient.InferInput("INPUT", [1, 1, 1], "FP64")
    f64.set_data_from_numpy(np.zeros((1, 1, 1), np.float64))
    refused(lambda: g.infer(MODEL, [f64], sequence_id=77), "INVALID_ARGUMENT", "FP64", "datatype")
    wide = grpcclient.InferInput("INPUT", [1, 1, 2], "FP32")
    wide.set_data_from_numpy(np.zeros((1, 1, 2), np.float32))
    refused(lambda: g.infer(MODEL, [wide], sequence_id=77), "INVALID_ARGUMENT",
            "unexpected shape", "shape")
    refused(lambda: g.infer(MODEL, seq_input(grpcclient, [np.nan]), sequence_id=77),
            "INVALID_ARGUMENT", "not finite", "NaN")
    big = grpcclient.InferInput("INPUT", [1, 600_000, 1], "FP32")
    big.set_data_from_numpy(np.zeros((1, 600_000, 1), np.float32))
    refused(lambda: g.infer(MODEL, [big]), "OUT_OF_RANGE", "", "oversize message")
    g.infer(MODEL, one, sequence_id=78, sequence_start=True, sequence_end=True)
    refused(lambda: g.infer(MODEL, one, sequence_id=78, sequence_end=True), "INVALID_ARGUMENT",
            "sequence 78", "END twice")
    refused(lambda: g.get_trace_settings(), "UNIMPLEMENTED", "TraceSetting", "unsupported RPC")
    refused(lambda: h.infer(MODEL, seq_input(httpclient, [0.5]), sequence_id=6), "400",
            "must specify the START flag", "http no START")
    for t in (1, 2):
        kept.append(g.infer(MODEL, seq_input(grpcclient, keep[t]), sequence_id=77,
                            sequence_end=(t == 2)).as_numpy("OUTPUT").reshape(-1))
    close(np.array(kept), ref.steps(keep), "sequence 77 after the refusals")

    # ---- statistics: real counts
    st = g.get_inference_statistics(MODEL, as_json=True)["model_stats"][0]["inference_stats"]
    check(int(st["success"]["count"]) > 100 and int(st["fail"]["count"]) >= 5, st)
    check(h.get_inference_statistics(MODEL)["model_stats"][0]["name"] == MODEL, "http stats")
    print("tritonclient checks passed: gRPC and HTTP")


if __name__ == "__main__":
    main()
