#!/usr/bin/env python3
"""Tests failover.FailoverSession against a real gru-serve that is killed
(SIGKILL) mid-sequence and started again on the same port: the session
re-opens by key, replays, and ends with exactly the outputs of an
uninterrupted run.

    clients/python/gen_stubs.sh        # once
    python clients/python/test_failover.py --gru-serve target/debug/gru-serve

Needs requirements.txt (grpcio, numpy) and the repository's models/ (`sine`).
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(HERE, "_gen"))
sys.path.insert(0, HERE)

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from failover import FailoverError, FailoverSession  # noqa: E402
from gru.v1 import gru_pb2_grpc as rpc  # noqa: E402

GRU_SERVE = os.path.join(ROOT, "target", "debug", "gru-serve")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """gru-serve on a copy of models/, on a fixed port across restarts."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="gru-failover-")
        shutil.copytree(os.path.join(ROOT, "models"), os.path.join(self.dir, "models"))
        self.port = free_port()
        self.proc = None

    def start(self, models=None):
        self.proc = subprocess.Popen(
            [GRU_SERVE, "--listen", f"127.0.0.1:{self.port}", "--metrics-listen", "off",
             "--model-dir", models or os.path.join(self.dir, "models"), "--log", "warn"],
            stdout=subprocess.DEVNULL)
        deadline = time.time() + 60
        while True:
            ok = subprocess.run([GRU_SERVE, "health", "--addr", f"http://127.0.0.1:{self.port}",
                                 "--timeout", "1s"], capture_output=True).returncode == 0
            if ok:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"gru-serve exited with {self.proc.returncode}")
            if time.time() > deadline:
                raise RuntimeError("gru-serve not SERVING within 60 s")
            time.sleep(0.1)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)


class FailoverTest(unittest.TestCase):
    def setUp(self):
        self.server = Server()
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = rpc.GruServiceStub(self.channel)

    def tearDown(self):
        self.channel.close()
        self.server.stop()

    def run_rows(self, s, xs):
        return np.concatenate([s.step(x.reshape(1, 1)) for x in xs])

    def test_a_crash_mid_sequence_ends_as_if_uninterrupted(self):
        xs = np.sin(np.arange(40) * 0.3).astype(np.float32)
        want = self.run_rows(FailoverSession(self.stub, "sine", "reference"), xs)

        s = FailoverSession(self.stub, "sine", "user-1")
        got = [self.run_rows(s, xs[:17])]
        self.server.kill()
        # Back 300 ms later, while the client is already stepping.
        restart = threading.Timer(0.3, self.server.start)
        restart.start()
        got.append(self.run_rows(s, xs[17:]))
        restart.join()
        got = np.concatenate(got)

        self.assertGreaterEqual(s.failovers, 1)
        self.assertEqual(s.step_index, 40)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)

    def test_a_bounded_window_refuses_to_replay_what_it_dropped(self):
        xs = np.linspace(-1, 1, 10, dtype=np.float32)
        s = FailoverSession(self.stub, "sine", "short", keep_at_most=4)
        self.run_rows(s, xs[:8])
        self.server.kill()
        # A fresh folder: no session store survives, the key re-opens at 0.
        fresh = os.path.join(self.server.dir, "fresh")
        shutil.copytree(os.path.join(ROOT, "models"), fresh)
        self.server.start(models=fresh)
        with self.assertRaisesRegex(FailoverError, "keep_at_most"):
            s.step(xs[8:9].reshape(1, 1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--gru-serve", default=GRU_SERVE, help="the server binary")
    args, rest = ap.parse_known_args()
    GRU_SERVE = args.gru_serve
    unittest.main(argv=[sys.argv[0]] + rest)
