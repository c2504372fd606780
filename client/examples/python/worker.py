#!/usr/bin/env python3
"""Example aof-cluster worker in Python: claims GitHub webhook jobs over gRPC.

This file is meant to be read. It is the whole protocol a worker in any language
has to speak to ``aof.v1.WorkQueue`` (proto/proto/aof/v1/queue.proto):

1. **Claim** — open one server-streaming ``Claim(ClaimRequest)`` call on any node.
   The cluster pushes a ``Lease`` whenever a job for one of ``targets`` is ready,
   keeping at most ``max_in_flight`` un-finished leases outstanding on the stream.
2. **Extend** — while working, heartbeat with ``Extend(job_id, fencing_token)``.
   Each lease has a deadline (``deadline_ms``, ms since the Unix epoch). A lease
   that is neither extended nor finished by then expires and the job is leased to
   another worker (with a new ``fencing_token``). This worker extends every
   lease_timeout / 3, so two heartbeats in a row may be lost before the lease is.
3. **Complete** / **Fail** — finish with the same ``fencing_token``. If the cluster
   answers ``FAILED_PRECONDITION``, the token is stale: our lease expired and the
   job was leased again (or already finished). The result is dropped — never retry
   a completion rejected that way; the job's current holder owns it now.

Delivery is at-least-once: a job may run again after a lease expires (worker
crash, network partition, missed heartbeats), so make processing idempotent,
e.g. keyed on ``delivery_id``.

Every call may go to any node (followers forward to the Raft leader), and every OK
answer means the change is committed on a quorum. So on ``UNAVAILABLE`` the worker
simply moves on to the next endpoint of ``--endpoint`` with a bounded backoff.

Credentials: every call carries the metadata ``authorization: Bearer <token>``
with a worker token of the cluster (``--token``, default ``$AOF_WORKER_TOKEN``; an
admin token works too). A node answers ``UNAUTHENTICATED`` to a missing or unknown
token and ``PERMISSION_DENIED`` to a token that may not serve the requested
targets; when every node refuses, retrying cannot help and the worker exits 2.
``grpcs://HOST:PORT`` endpoints use TLS, verified with ``--ca-file`` (default
``$AOF_CA_FILE``) or the system's roots.

Generated code: the worker imports ``aof.v1.queue_pb2`` / ``queue_pb2_grpc`` if
they are on ``sys.path`` (``PYTHONPATH``; see ``generate.sh``); otherwise it
generates them at start-up from the .proto into a temporary directory with
``grpcio-tools``. Dependencies: ``pip install -r requirements.txt``.

Usage (a local cluster from cluster-configs/local serves gRPC on 4001-4003; its
nodes read the worker token from ``AOF_WORKER_TOKEN``)::

    AOF_WORKER_TOKEN=... python3 worker.py \\
        --endpoint 127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003 \\
        --target py-worker --max-in-flight 4

SIGTERM / SIGINT stop claiming, let the jobs in hand finish (and complete them),
then exit 0. A second signal exits at once (held leases then simply expire).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

log = logging.getLogger("aof-worker")

# Payloads are GitHub webhook bodies (up to 25 MiB); gRPC's default receive limit
# is 4 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Unary calls (Extend / Complete / Fail): each is one Raft commit, normally a few ms.
CALL_TIMEOUT_S = 10.0
# Reconnect backoff of the claim stream: from 0.2 s, doubling, at most 5 s.
BACKOFF_MIN_S = 0.2
BACKOFF_MAX_S = 5.0
# Codes after which another node may succeed.
RETRY_ELSEWHERE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Codes that say the token was refused: only another token helps.
REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
# Exit code when every node refused the token.
EXIT_REFUSED = 2


# ---------------------------------------------------------------------------
# Generated code
# ---------------------------------------------------------------------------

def default_proto_dir() -> Path:
    # client/examples/python/worker.py -> <repo>/proto/proto
    return Path(__file__).resolve().parents[3] / "proto" / "proto"


def load_stubs(proto_dir: Path):
    """Import the generated modules, generating them into a temp dir if needed."""
    try:
        from aof.v1 import queue_pb2, queue_pb2_grpc  # type: ignore

        return queue_pb2, queue_pb2_grpc
    except ImportError:
        pass
    try:
        from grpc_tools import protoc
    except ImportError:
        sys.exit("worker: grpcio-tools is not installed (pip install -r requirements.txt), "
                 "and aof/v1/queue_pb2.py is not on PYTHONPATH")
    proto = proto_dir / "aof" / "v1" / "queue.proto"
    if not proto.is_file():
        sys.exit(f"worker: {proto} not found; pass --proto-dir (the directory holding aof/v1/queue.proto)")
    out = tempfile.mkdtemp(prefix="aof-proto-py-")
    atexit.register(shutil.rmtree, out, True)
    # grpc_tools ships the well-known types (google/protobuf/*.proto) next to itself.
    wkt = Path(protoc.__file__).parent / "_proto"
    rc = protoc.main(["grpc_tools.protoc", f"-I{proto_dir}", f"-I{wkt}",
                      f"--python_out={out}", f"--grpc_python_out={out}", "aof/v1/queue.proto"])
    if rc != 0:
        sys.exit(f"worker: protoc failed on {proto} (exit {rc})")
    sys.path.insert(0, out)
    from aof.v1 import queue_pb2, queue_pb2_grpc  # type: ignore

    return queue_pb2, queue_pb2_grpc


pb = None       # aof.v1.queue_pb2, set by main()
pb_grpc = None  # aof.v1.queue_pb2_grpc


# ---------------------------------------------------------------------------
# Connections
# ---------------------------------------------------------------------------

def split_endpoint(endpoint: str) -> tuple[str, bool]:
    """``grpc://h:p``, ``http://h:p`` or ``h:p`` -> (``h:p``, plain text);
    ``grpcs://h:p`` or ``https://h:p`` -> (``h:p``, TLS)."""
    for prefix, tls in (("grpcs://", True), ("https://", True), ("grpc://", False), ("http://", False)):
        if endpoint.startswith(prefix):
            return endpoint[len(prefix):], tls
    return endpoint, False


class Cluster:
    """The node list: one channel per node, a 'current' node, fail-over in order.
    Every call carries the worker token as ``authorization`` metadata."""

    def __init__(self, endpoints: list[str], token: str = "", ca_pem: bytes | None = None):
        self.endpoints = endpoints
        # Per-call metadata: works on plain-text and TLS channels alike.
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self._ca_pem = ca_pem
        self._current = 0
        self._stubs: dict[str, object] = {}
        self._channels: list[grpc.Channel] = []
        self._lock = threading.Lock()

    def _stub(self, endpoint: str):
        with self._lock:
            stub = self._stubs.get(endpoint)
            if stub is None:
                target, tls = split_endpoint(endpoint)
                options = [
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    # Notice a dead node under an idle Claim stream.
                    ("grpc.keepalive_time_ms", 10_000),
                    ("grpc.keepalive_timeout_ms", 5_000),
                ]
                if tls:
                    creds = grpc.ssl_channel_credentials(root_certificates=self._ca_pem)
                    channel = grpc.secure_channel(target, creds, options=options)
                else:
                    channel = grpc.insecure_channel(target, options=options)
                self._channels.append(channel)
                stub = self._stubs[endpoint] = pb_grpc.WorkQueueStub(channel)
            return stub

    def current(self):
        with self._lock:
            endpoint = self.endpoints[self._current]
        return endpoint, self._stub(endpoint)

    def advance(self, failed: str) -> None:
        """Move to the node after `failed` (unless someone already moved on)."""
        with self._lock:
            if self.endpoints[self._current] == failed:
                self._current = (self._current + 1) % len(self.endpoints)

    def call(self, method: str, request):
        """A unary call, trying each node once, current first, while the answer is
        UNAVAILABLE / DEADLINE_EXCEEDED. Other errors are raised as they are.

        Retrying Extend / Complete / Fail elsewhere is safe: a call that did commit
        but whose answer was lost makes the retry fail with FAILED_PRECONDITION (the
        lease is gone), which callers treat as "drop"."""
        last = None
        for _ in range(len(self.endpoints)):
            endpoint, stub = self.current()
            try:
                return getattr(stub, method)(request, timeout=CALL_TIMEOUT_S, metadata=self.metadata)
            except grpc.RpcError as e:
                if e.code() not in RETRY_ELSEWHERE:
                    raise
                log.info("%s via %s: %s: %s; trying the next node", method, endpoint, e.code().name, e.details())
                last = e
                self.advance(endpoint)
        raise last

    def close(self) -> None:
        for c in self._channels:
            c.close()


# ---------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------

class LeaseLost(Exception):
    """The lease expired or was taken over; stop working on the job."""


class Heartbeat(threading.Thread):
    """Extends one lease every lease_timeout / 3 until stopped."""

    def __init__(self, cluster: Cluster, lease):
        super().__init__(name=f"heartbeat-{lease.job_id}", daemon=True)
        self.cluster = cluster
        self.lease = lease
        self.deadline_ms = lease.deadline_ms
        # The lease timeout is not on the wire; the fresh lease's remaining time is it
        # (minus transit). Both clocks are wall clocks, so clamp against skew.
        timeout_s = max(0.3, (lease.deadline_ms - time.time() * 1000) / 1000)
        self.period_s = timeout_s / 3
        self.lost = threading.Event()
        self._stop_evt = threading.Event()

    def stop(self) -> None:
        self._stop_evt.set()

    def run(self) -> None:
        while not self._stop_evt.wait(self.period_s):
            req = pb.ExtendRequest(job_id=self.lease.job_id, fencing_token=self.lease.fencing_token)
            try:
                reply = self.cluster.call("Extend", req)
                self.deadline_ms = reply.deadline_ms
                log.debug("job %s: extended to %d", self.lease.job_id, reply.deadline_ms)
            except grpc.RpcError as e:
                if self._stop_evt.is_set():
                    return  # finished meanwhile: an Extend racing Complete is expected to lose
                if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    log.warning("job %s: lease lost (%s); abandoning it", self.lease.job_id, e.details())
                    self.lost.set()
                    return
                # Transient: the next beat, a period later, is still before the deadline.
                log.warning("job %s: Extend failed: %s: %s", self.lease.job_id, e.code().name, e.details())


def process(lease, args, lost: threading.Event) -> str:
    """The work itself. Replace this with your agent. Returns the result string
    kept (truncated) in the job's history."""
    target = f"{lease.target.kind}/{lease.target.name}"
    repo = lease.context.get("repo_full_name", "-")
    action = lease.context.get("action")
    event = f"{lease.event}.{action}" if action else lease.event
    log.info("job %s attempt %d: %s (delivery %s) -> %s, repo %s, payload %d bytes",
             lease.job_id, lease.attempt, event, lease.delivery_id, target, repo, len(lease.payload))

    # Simulated work (--work-ms), abandoned as soon as the lease is lost.
    end = time.monotonic() + args.work_ms / 1000
    while (left := end - time.monotonic()) > 0:
        if lost.wait(min(left, 0.1)):
            raise LeaseLost()

    if args.out_dir:
        # Write then rename: a reader never sees a partial file.
        final = Path(args.out_dir) / f"{lease.job_id}.json"
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        tmp.write_bytes(lease.payload)
        os.replace(tmp, final)
    return json.dumps({"worker": args.worker_id, "repo": repo, "payload_bytes": len(lease.payload)})


# ---------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------

class Worker:
    def __init__(self, args):
        self.args = args
        ca_pem = Path(args.ca_file).read_bytes() if args.ca_file else None
        self.cluster = Cluster(args.endpoint, args.token, ca_pem)
        self.stopping = threading.Event()
        self.completed = 0
        # Set when every node refused the token (the process then exits EXIT_REFUSED).
        self.refused: str | None = None
        self._lock = threading.Lock()
        self._claim_call = None
        self._jobs: set[threading.Thread] = set()

    def stop(self, why: str) -> None:
        if not self.stopping.is_set():
            log.info("stopping (%s): no new leases; finishing %d job(s) in hand", why, len(self._jobs))
        self.stopping.set()
        with self._lock:
            call = self._claim_call
        if call is not None:
            call.cancel()

    # The claim loop (main thread) -------------------------------------------

    def run(self) -> None:
        backoff = BACKOFF_MIN_S
        refused_in_a_row = 0
        request = pb.ClaimRequest(worker_id=self.args.worker_id, targets=self.args.target,
                                  max_in_flight=self.args.max_in_flight)
        while not self.stopping.is_set():
            endpoint, stub = self.cluster.current()
            opened = time.monotonic()
            got_lease = False
            # No deadline: the stream lives as long as we do.
            call = stub.Claim(request, metadata=self.cluster.metadata)
            with self._lock:
                self._claim_call = call
            if self.stopping.is_set():  # stop() ran before _claim_call was set
                call.cancel()
            log.info("opening claim stream on %s (targets: %s, max in flight %d)", endpoint,
                     ", ".join(self.args.target) or "all", self.args.max_in_flight)
            try:
                for lease in call:
                    got_lease = True
                    self._start_job(lease)
                log.warning("claim stream on %s ended by the server", endpoint)
                refused_in_a_row = 0
            except grpc.RpcError as e:
                if self.stopping.is_set():
                    break
                log.warning("claim stream on %s failed: %s: %s", endpoint, e.code().name, e.details())
                if e.code() in REFUSED:
                    refused_in_a_row += 1
                    if refused_in_a_row >= len(self.cluster.endpoints):
                        if self.args.token:
                            hint = ("the token was refused: use a worker token of the cluster (the nodes' "
                                    "AOF_WORKER_TOKEN) allowed to serve these targets, or an admin token")
                        else:
                            hint = ("no token was sent: pass --token or set AOF_WORKER_TOKEN to a worker "
                                    "(or admin) token of the cluster")
                        self.refused = f"every node refused the worker: {e.code().name}: {e.details()}; {hint}"
                        log.error("%s", self.refused)
                        self.stopping.set()
                        break
                else:
                    refused_in_a_row = 0
            finally:
                with self._lock:
                    self._claim_call = None
            if self.stopping.is_set():
                break
            # A stream that worked for a while resets the backoff.
            if got_lease or time.monotonic() - opened > 10:
                backoff = BACKOFF_MIN_S
            self.cluster.advance(endpoint)
            log.info("reconnecting in %.1f s", backoff)
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)
        self._drain()

    def _drain(self) -> None:
        for t in list(self._jobs):
            t.join()
        self.cluster.close()
        log.info("stopped after %d completed job(s)", self.completed)

    # Jobs (one thread each; the server bounds how many are in flight) ---------

    def _start_job(self, lease) -> None:
        # Heartbeats start now, not when a thread is free: the lease clock runs.
        hb = Heartbeat(self.cluster, lease)
        hb.start()
        t = threading.Thread(target=self._job, args=(lease, hb), name=f"job-{lease.job_id}")
        with self._lock:
            self._jobs.add(t)
        t.start()

    def _job(self, lease, hb: Heartbeat) -> None:
        try:
            try:
                result = process(lease, self.args, hb.lost)
            except LeaseLost:
                return  # another worker holds the job now
            except Exception as e:  # the job failed: let the cluster retry it
                log.exception("job %s failed", lease.job_id)
                self._fail(lease, f"{type(e).__name__}: {e}")
                return
            # Heartbeats continue during Complete: it may have to fail over.
            if self._complete(lease, result):
                with self._lock:
                    self.completed += 1
                    done = self.completed
                if self.args.max_jobs and done >= self.args.max_jobs:
                    self.stop(f"--max-jobs {self.args.max_jobs} reached")
        finally:
            hb.stop()
            with self._lock:
                self._jobs.discard(threading.current_thread())

    def _complete(self, lease, result: str) -> bool:
        req = pb.CompleteRequest(job_id=lease.job_id, fencing_token=lease.fencing_token, result=result)
        try:
            self.cluster.call("Complete", req)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                # Our lease expired and the job was leased again (or is already
                # finished). Drop the result; never retry this completion.
                log.warning("job %s: completion rejected, stale fencing token %d: %s; result dropped",
                            lease.job_id, lease.fencing_token, e.details())
            elif e.code() == grpc.StatusCode.NOT_FOUND:
                log.warning("job %s: completion rejected: %s; result dropped", lease.job_id, e.details())
            else:
                log.error("job %s: Complete failed on every node: %s: %s; the lease will expire and "
                          "the job run again", lease.job_id, e.code().name, e.details())
            return False
        log.info("job %s completed (token %d)", lease.job_id, lease.fencing_token)
        return True

    def _fail(self, lease, error: str) -> None:
        req = pb.FailRequest(job_id=lease.job_id, fencing_token=lease.fencing_token,
                             error=error[:1000], retryable=True)
        try:
            reply = self.cluster.call("Fail", req)
            log.info("job %s: reported failure; outcome %s", lease.job_id, reply.outcome)
        except grpc.RpcError as e:
            log.warning("job %s: Fail not recorded: %s: %s", lease.job_id, e.code().name, e.details())


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Example aof-cluster worker: claim, heartbeat, complete.")
    p.add_argument("--endpoint", default="127.0.0.1:4001",
                   help="gRPC address(es) of cluster nodes (spec.cluster.grpc_addr), comma-separated; "
                        "grpcs://HOST:PORT for TLS; the next one is tried when a node fails (default %(default)s)")
    p.add_argument("--token", default=os.environ.get("AOF_WORKER_TOKEN", ""),
                   help="worker (or admin) token of the cluster, sent as 'authorization: Bearer' metadata "
                        "(default $AOF_WORKER_TOKEN)")
    p.add_argument("--ca-file", default=os.environ.get("AOF_CA_FILE") or None,
                   help="PEM CA to verify grpcs:// endpoints with (default $AOF_CA_FILE, else the system's roots)")
    p.add_argument("--target", action="append", default=[],
                   help="target name (agent / fleet / flow) to serve; repeatable; none = all")
    p.add_argument("--worker-id", default=f"{socket.gethostname()}/{os.getpid()}",
                   help="identity shown in job history (default host/pid)")
    p.add_argument("--max-in-flight", type=int, default=1, help="leases held at once (default 1)")
    p.add_argument("--max-jobs", type=int, default=0, help="exit 0 after N completions (0 = run until SIGTERM)")
    p.add_argument("--out-dir", help="write each processed payload to DIR/<job_id>.json")
    p.add_argument("--work-ms", type=int, default=0, help="simulated processing time per job, ms")
    p.add_argument("--proto-dir", type=Path, default=Path(os.environ.get("AOF_PROTO_DIR", default_proto_dir())),
                   help="directory holding aof/v1/queue.proto, used if the generated code is not importable")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging (every heartbeat)")
    args = p.parse_args(argv)
    args.endpoint = [e.strip().rstrip("/") for e in args.endpoint.split(",") if e.strip()]
    args.token = args.token.strip()
    if not args.endpoint:
        p.error("--endpoint: at least one address")
    if not 1 <= args.max_in_flight <= 1024:
        p.error("--max-in-flight: 1..1024")
    if args.out_dir:
        Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    return args


def main(argv=None) -> int:
    global pb, pb_grpc
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(threadName)s: %(message)s")
    pb, pb_grpc = load_stubs(args.proto_dir)
    worker = Worker(args)

    def on_signal(signum, _frame):
        if worker.stopping.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(130)
        worker.stop(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker.run()
    if worker.refused:
        print(f"worker: {worker.refused}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
