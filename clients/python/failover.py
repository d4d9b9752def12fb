"""A gru-serve session that survives its server: open by key, step, and when
the server is gone or no longer has the session, open the key again and
replay from the step index the server reports.

    from failover import FailoverSession
    s = FailoverSession(stub, model="sine", session_key="user-7")
    y = s.step(np.array([[0.3]], dtype=np.float32))   # k x input_size in, k x output_size out

Exactly-once: every step message names the index it starts at
(`start_step`), so the server never applies a step twice, and a reply lost
with the connection is asked for again and answered from the server's last
reply. After a failover the re-opened session is at some index s (the last
checkpoint with a durable session store; 0 with `--session-store memory`
after a restart): the helper resends the inputs from s on, which it kept,
and returns only the outputs of the new rows. Outputs equal an
uninterrupted run's, because the state at s is the state the server had
there. `keep_at_most` bounds the inputs kept (enough for the steps between
two checkpoints, with margin); a failover to an index before the oldest kept
row raises FailoverError instead of leaving a gap.

Retried: UNAVAILABLE (server down or stopping), NOT_FOUND (restart, or a
balancer moved the key) and FAILED_PRECONDITION (the session is at another
step, e.g. restored from a checkpoint), up to `max_attempts` tries per call
with a backoff doubling from 50 ms to 2 s (about 40 s in all). The Rust
twin is examples/client/failover.rs.
"""

import time

import grpc
import numpy as np

from gru.v1 import gru_pb2 as pb

FAILOVER_CODES = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
)


class FailoverError(Exception):
    """The session cannot continue exactly: inputs needed for the replay were
    not kept, or the server's index makes no sense for what was sent."""


class FailoverSession:
    def __init__(self, stub, model, session_key, version=0, initial_state=None,
                 keep_at_most=None, max_attempts=25, backoff=0.05, timeout=30.0):
        if not session_key:
            raise ValueError("FailoverSession needs a session_key: re-opening by key is how it fails over")
        self.stub = stub
        self.open_request = pb.OpenSessionRequest(
            model=model, version=version, session_key=session_key, initial_state=initial_state)
        self.metadata = (("x-session-key", session_key),)
        self.keep_at_most = keep_at_most
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.timeout = timeout
        self.failovers = 0
        self.session_id = ""
        self.input_size = 0
        self.step_index = 0       # acknowledged by the server
        self.kept_from = 0        # step index of kept[0]
        self.kept = np.zeros((0, 0), dtype=np.float32)
        self._retrying(self._reopen)
        self.kept_from = self.step_index
        self.kept = np.zeros((0, self.input_size), dtype=np.float32)

    def _reopen(self):
        r = self.stub.OpenSession(self.open_request, metadata=self.metadata, timeout=self.timeout)
        if not self.input_size:
            info = self.stub.GetModel(pb.GetModelRequest(model=r.model, version=r.version),
                                      metadata=self.metadata, timeout=self.timeout).model
            self.input_size = info.input_size
        self.session_id = r.session_id
        self.step_index = r.step_index

    def _retrying(self, call):
        wait, attempt = self.backoff, 1
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                if e.code() not in FAILOVER_CODES or attempt >= self.max_attempts:
                    raise
                first = e
            while True:  # re-open until it works (the server may be starting)
                attempt += 1
                time.sleep(wait)
                wait = min(wait * 2, 2.0)
                try:
                    self._reopen()
                    break
                except grpc.RpcError as e:
                    if e.code() not in FAILOVER_CODES or attempt >= self.max_attempts:
                        raise FailoverError(f"failing over after {first.code().name}: {e.details()}") from e
            self.failovers += 1

    def step(self, rows):
        """Steps rows (k x input_size) and returns their outputs (k x output_size)."""
        rows = np.asarray(rows, dtype=np.float32).reshape(-1, self.input_size)
        if len(rows) == 0:
            raise ValueError("no rows to step")
        new_from = self.kept_from + len(self.kept)
        self.kept = np.concatenate([self.kept, rows])
        try:
            y = self._retrying(lambda: self._send(new_from, len(rows)))
        except Exception:
            self.kept = self.kept[: len(self.kept) - len(rows)]  # not sent for good
            raise
        if self.keep_at_most is not None and len(self.kept) > self.keep_at_most:
            drop = len(self.kept) - self.keep_at_most
            self.kept = self.kept[drop:]
            self.kept_from += drop
        return y

    def _send(self, new_from, k):
        end = new_from + k
        if self.step_index < self.kept_from:
            raise FailoverError(
                f"the server's session '{self.open_request.session_key}' is at step {self.step_index}, "
                f"but only the inputs from step {self.kept_from} on were kept: raise keep_at_most")
        if self.step_index > new_from:
            # Applied, reply lost: a retry of the last message is answered
            # from the server's last reply.
            if self.step_index != end:
                raise FailoverError(
                    f"the server's session is at step {self.step_index}, inside the message "
                    f"that started at {new_from}")
            self.step_index = new_from
        start = self.step_index
        inputs = self.kept[start - self.kept_from:]
        r = self.stub.Step(pb.StepRequest(
            session_id=self.session_id,
            inputs=pb.Matrix(rows=len(inputs), cols=self.input_size, values=inputs.ravel().tolist()),
            start_step=start, has_start_step=True),
            metadata=self.metadata, timeout=self.timeout)
        if r.WhichOneof("result") != "ok":
            raise FailoverError(f"step error {r.error.code}: {r.error.message}")
        if r.ok.next_step != end:
            raise FailoverError(f"the reply ends at step {r.ok.next_step}, not {end}")
        self.step_index = end
        m = r.ok.outputs
        y = np.asarray(m.values, dtype=np.float32).reshape(m.rows, m.cols)
        return y[new_from - start:]  # the replayed rows' outputs were returned before
