"""Harness of the container tests (deploy/tests/container_tests.py).

`Compose` drives deploy/docker-compose.yml under a compose project of its own (free
host ports, random tokens and webhook secret, `down -v` at the end); `Sender` posts
signed GitHub deliveries at a fixed rate over every node's published webhook port and
retries a delivery on the next node after a refused connection, a timeout or a 503,
as GitHub's redelivery would; `LeaderWatch` samples the nodes' /ready.

Only the Python standard library. Talks only to 127.0.0.1 (published ports) and to
the containers its projects create. Every wait is bounded and polls a condition.
"""

import concurrent.futures
import hashlib
import hmac
import http.client as httpclient
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

DEPLOY_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMPOSE_FILE = os.path.join(DEPLOY_DIR, "docker-compose.yml")
ALL_NODES = (1, 2, 3, 4, 5)


def sh(args, check=True, timeout=180, env=None):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {(r.stderr.strip() or r.stdout.strip())[-2000:]}")
    return r


def compose_cmd():
    """`docker compose` (v2 plugin) when present, else `docker-compose` (v1)."""
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    return ["docker-compose"]


def free_ports(n):
    """n distinct free TCP ports on 127.0.0.1 (held open together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http(method, url, body=None, headers=None, timeout=10):
    """(status, parsed JSON or text). Connection errors and timeouts raise OSError."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except urllib.error.URLError as e:
        raise OSError(f"{method} {url}: {e.reason}") from e
    except httpclient.HTTPException as e:  # RemoteDisconnected, BadStatusLine, ...
        raise OSError(f"{method} {url}: {e!r}") from e
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_until(what, fn, within_s, every_s=0.5):
    """Polls fn() until it returns a truthy value, at most within_s seconds."""
    deadline = time.monotonic() + within_s
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not within {within_s} s (last: {last!r})")
        time.sleep(every_s)


def push_payload(delivery):
    return json.dumps({
        "ref": "refs/heads/main",
        "before": "0" * 40,
        "after": hashlib.sha1(delivery.encode()).hexdigest(),
        "repository": {"id": 1, "name": "api", "full_name": "acme/api", "owner": {"login": "acme"}},
        "sender": {"login": "octocat"},
        "commits": [],
    }).encode()


def signed_headers(secret, delivery, payload):
    sig = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sig,
    }


class Compose:
    """One compose project of deploy/docker-compose.yml, with its own ports and secrets."""

    def __init__(self, test, image, extra_env=None, profiles=(), override=None):
        self.project = f"aofct-{test}-{os.getpid()}".lower()
        self.image = image
        self.override = None
        if override:
            fd, self.override = tempfile.mkstemp(prefix="aofct-override-", suffix=".yml")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(override)
        self.base = compose_cmd()
        self.profiles = list(profiles)
        self.admin_token = "ct-admin-" + uuid.uuid4().hex
        self.read_token = "ct-read-" + uuid.uuid4().hex
        self.worker_token = "ct-worker-" + uuid.uuid4().hex
        self.secret = "ct-secret-" + uuid.uuid4().hex
        ports = free_ports(2 * len(ALL_NODES))
        self.webhook_port = {n: ports[2 * i] for i, n in enumerate(ALL_NODES)}
        self.api_port = {n: ports[2 * i + 1] for i, n in enumerate(ALL_NODES)}
        # An empty env file, so a developer's deploy/.env does not leak into the test.
        fd, self.env_file = tempfile.mkstemp(prefix="aofct-env-")
        os.close(fd)
        self.env = dict(os.environ)
        self.env.update({
            "AOF_IMAGE": image,
            "AOF_BIND": "127.0.0.1",
            "AOF_ADMIN_TOKEN": self.admin_token,
            "AOF_READ_TOKEN": self.read_token,
            "AOF_WORKER_TOKEN": self.worker_token,
            "GITHUB_WEBHOOK_SECRET": self.secret,
            "AOF_RUST_LOG": "info",
        })
        for n in ALL_NODES:
            self.env[f"AOF_{n}_WEBHOOK_PORT"] = str(self.webhook_port[n])
            self.env[f"AOF_{n}_API_PORT"] = str(self.api_port[n])
        self.env.update(extra_env or {})

    # -- compose -------------------------------------------------------------------
    def cmd(self, *args, timeout=180, check=True):
        full = self.base + ["--env-file", self.env_file, "-p", self.project, "-f", COMPOSE_FILE]
        if self.override:
            full += ["-f", self.override]
        for p in self.profiles:
            full += ["--profile", p]
        return sh(full + list(args), check=check, timeout=timeout, env=self.env)

    def up(self, *services, no_deps=False):
        args = ["up", "-d"] + (["--no-deps"] if no_deps else []) + list(services)
        self.cmd(*args, timeout=300)

    def certs(self):
        """Runs the one-shot `certs` service to completion (CA + node certificates)."""
        self.up("certs", no_deps=True)
        wait_until("the certs service exits 0", lambda: self.exit_code("certs") == 0, 60)

    def cid(self, svc):
        out = self.cmd("ps", "-a", "-q", svc).stdout.split()
        if not out:
            raise RuntimeError(f"no container for service {svc}")
        return out[0]

    def inspect(self, svc):
        return json.loads(sh(["docker", "inspect", self.cid(svc)]).stdout)[0]

    def state(self, svc):
        return self.inspect(svc)["State"]

    def exit_code(self, svc):
        s = self.state(svc)
        return None if s["Running"] or s["Status"] == "created" else s["ExitCode"]

    def network(self):
        """The docker name of the compose network `aof`."""
        return f"{self.project}_aof"  # compose v1 and v2 alike

    def ip_of(self, svc):
        nets = self.inspect(svc)["NetworkSettings"]["Networks"]
        (ip,) = [v["IPAddress"] for k, v in nets.items() if k.endswith("_aof")]
        return ip

    def kill(self, svc):
        self.cmd("kill", "-s", "SIGKILL", svc)

    def stop(self, svc, t=60):
        self.cmd("stop", "-t", str(t), svc, timeout=t + 60)

    def start(self, svc):
        self.cmd("start", svc)

    def restart(self, svc, t=60):
        self.cmd("restart", "-t", str(t), svc, timeout=t + 60)

    def print_logs(self, tail=60, width=400):
        r = self.cmd("logs", "--no-color", "--tail", str(tail), check=False, timeout=60)
        print(f"--- logs of compose project {self.project} (last {tail} lines per container) ---", file=sys.stderr)
        for line in (r.stdout + r.stderr).splitlines():
            print(line[:width], file=sys.stderr)
        ps = self.cmd("ps", "-a", check=False, timeout=60)
        print(ps.stdout, file=sys.stderr)

    def down(self):
        self.cmd("down", "-v", "--remove-orphans", "-t", "10", check=False, timeout=180)

    def close(self):
        """`down -v`, then the env file goes."""
        self.down()
        for f in (self.env_file, self.override):
            try:
                if f:
                    os.unlink(f)
            except OSError:
                pass

    # -- nodes ---------------------------------------------------------------------
    def url(self, n, path):
        """On node n's public (webhook) listener."""
        return f"http://127.0.0.1:{self.webhook_port[n]}{path}"

    def api(self, n, method, path, body=None, headers=None, timeout=10):
        h = {"Authorization": f"Bearer {self.admin_token}"}
        h.update(headers or {})
        return http(method, f"http://127.0.0.1:{self.api_port[n]}{path}", body, h, timeout=timeout)

    def ready(self, n):
        """leader id when node n's /ready is 200, else None (raises when unreachable)."""
        status, body = http("GET", self.url(n, "/ready"), timeout=3)
        return body.get("leader_id") if status == 200 and isinstance(body, dict) else None

    def health(self, n):
        status, body = http("GET", self.url(n, "/health"), timeout=3)
        return status == 200 and isinstance(body, dict) and body.get("node_id") == n

    def cluster(self, n, stale=False):
        status, body = self.api(n, "GET", "/v1/cluster" + ("?consistency=stale" if stale else ""))
        if status != 200:
            raise RuntimeError(f"node {n} /v1/cluster: {status} {body}")
        return body

    def wait_ready(self, nodes, within_s=90):
        return {n: wait_until(f"node {n} /ready", lambda n=n: self.ready(n), within_s) for n in nodes}

    def post(self, n, delivery, secret=None, timeout=10):
        payload = push_payload(delivery)
        return http("POST", self.url(n, "/webhook/github"), payload,
                    signed_headers(secret or self.secret, delivery, payload), timeout=timeout)

    def delivery(self, n, delivery, stale=False):
        status, body = self.api(n, "GET", f"/v1/deliveries/{delivery}" + ("?consistency=stale" if stale else ""))
        return body if status == 200 and isinstance(body, dict) and body.get("delivery_id") == delivery else None

    def all_events(self, n):
        """Every event of the cluster (linearizable read on node n), all pages."""
        items, after = [], None
        for _ in range(1000):
            q = "/v1/events?limit=1000" + (f"&after={after}" if after is not None else "")
            status, body = self.api(n, "GET", q, timeout=30)
            if status != 200:
                raise RuntimeError(f"node {n} {q}: {status} {body}")
            items += body["items"]
            after = body.get("next_after")
            if after is None:
                return items
        raise RuntimeError("more than 1000 pages of events")


class Delivery:
    __slots__ = ("id", "index", "scheduled", "done", "status", "attempts", "outcomes", "duplicate", "node")

    def __init__(self, index, scheduled):
        self.id = str(uuid.uuid4())
        self.index = index
        self.scheduled = scheduled
        self.done = None
        self.status = None  # "accepted" | "failed"
        self.attempts = 0
        self.outcomes = []  # (node, "202" | "200" | "503" | "refused" | ...)
        self.duplicate = False
        self.node = None


class Sender:
    """Signed deliveries at a fixed rate over the nodes' webhook ports. A delivery goes
    first to node (i mod len(nodes)); a refused/reset connection, a timeout or a 5xx
    sends it to the next node (a short pause after each full round), until it is
    accepted (202, or 200 `duplicate` when an earlier attempt had committed) or
    give_up_s has passed since it was scheduled."""

    def __init__(self, compose, nodes, rate, attempt_timeout_s=10, give_up_s=60):
        self.c = compose
        self.nodes = list(nodes)
        self.rate = rate
        self.attempt_timeout_s = attempt_timeout_s
        self.give_up_s = give_up_s
        self.deliveries = []
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="sender")
        self._futures = []
        self._thread = None

    def start(self):
        self._thread = threading.Thread(target=self._schedule, name="sender-clock", daemon=True)
        self._thread.start()

    def _schedule(self):
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            at = t0 + i / self.rate
            delay = at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            d = Delivery(i, time.monotonic())
            self.deliveries.append(d)
            self._futures.append(self._pool.submit(self._send, d))
            i += 1

    def _send(self, d):
        payload = push_payload(d.id)
        headers = signed_headers(self.c.secret, d.id, payload)
        deadline = d.scheduled + self.give_up_s
        k = d.index
        while True:
            n = self.nodes[k % len(self.nodes)]
            d.attempts += 1
            try:
                status, body = http("POST", self.c.url(n, "/webhook/github"), payload, headers,
                                    timeout=self.attempt_timeout_s)
                outcome = str(status)
            except OSError as e:
                status, body, outcome = None, None, "refused" if "refused" in str(e).lower() else "error"
            d.outcomes.append((n, outcome))
            if status == 202 or (status == 200 and isinstance(body, dict) and body.get("duplicate")):
                d.status, d.done, d.node = "accepted", time.monotonic(), n
                d.duplicate = status == 200
                return
            if status is not None and status < 500:
                d.status, d.done = "failed", time.monotonic()  # 4xx: a retry cannot help
                return
            if time.monotonic() >= deadline:
                d.status, d.done = "failed", time.monotonic()
                return
            k += 1
            if (k - d.index) % len(self.nodes) == 0:
                time.sleep(0.5)  # every node refused this round

    def stop(self):
        """Stops scheduling; waits (bounded) for every delivery to finish."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        done, pending = concurrent.futures.wait(self._futures, timeout=self.give_up_s + 2 * self.attempt_timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        for f in done:
            f.result()  # a bug in _send surfaces here
        if pending:
            raise AssertionError(f"{len(pending)} deliveries still in flight after the sender's bound")

    def stats(self):
        ds = self.deliveries
        lat = sorted(d.done - d.scheduled for d in ds if d.status == "accepted")

        def pct(p):
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 3) if lat else None

        # The longest time no delivery was accepted anywhere while the load ran.
        done = sorted(d.done for d in ds if d.status == "accepted")
        gap = max((b - a for a, b in zip(done, done[1:])), default=0.0)
        return {
            "deliveries": len(ds),
            "accepted": sum(d.status == "accepted" for d in ds),
            "failed": sum(d.status != "accepted" for d in ds),
            "retried_deliveries": sum(d.attempts > 1 for d in ds),
            "retries": sum(d.attempts - 1 for d in ds),
            "answered_duplicate": sum(d.duplicate for d in ds),
            "latency_p50_s": pct(0.50),
            "latency_p99_s": pct(0.99),
            "latency_max_s": round(lat[-1], 3) if lat else None,
            "longest_intake_gap_s": round(gap, 3),
        }


class LeaderWatch:
    """Samples every node's view of the leader (`/v1/cluster?consistency=stale`) every
    `every_s`: the (term, leader) pairs seen, and the time during which no reachable
    node named a leader. A follower keeps naming a stopped leader until its election
    timeout, so that time is a lower bound; the sender's longest intake gap is the
    other side of it."""

    def __init__(self, compose, nodes, every_s=0.2):
        self.c = compose
        self.nodes = list(nodes)
        self.every_s = every_s
        self.leaderless_s = 0.0
        self.longest_leaderless_s = 0.0
        self.samples = 0
        self.terms = {}  # term -> leader
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="leader-watch", daemon=True)

    def start(self):
        self._thread.start()

    def _run(self):
        last = time.monotonic()
        run = 0.0
        while not self._stop.is_set():
            leader = None
            for n in self.nodes:
                try:
                    status, body = self.c.api(n, "GET", "/v1/cluster?consistency=stale", timeout=2)
                except OSError:
                    continue
                if status == 200 and isinstance(body, dict) and body.get("leader_id"):
                    leader = body["leader_id"]
                    self.terms.setdefault(body["term"], leader)
            now = time.monotonic()
            self.samples += 1
            if leader:
                run = 0.0
            else:
                self.leaderless_s += now - last
                run += now - last
                self.longest_leaderless_s = max(self.longest_leaderless_s, run)
            last = now
            self._stop.wait(self.every_s)

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)
