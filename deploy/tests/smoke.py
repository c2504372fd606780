#!/usr/bin/env python3
"""Smoke test of the aof-cluster image: a three-node cluster in containers.

What it proves about the image (not about cluster features, which have their own
tests): `aofctl` runs in it as the non-root user; `aofctl certs init` in it makes the
cluster's peer certificates; `aofctl serve` with a config file and the certificates
mounted in runs a node that answers /health (and the image's HEALTHCHECK turns
"healthy"); three containers on a private network form ONE cluster over mutual TLS;
the public listener serves no API and the API wants its token; a signed webhook
posted to one node's public port is readable from another's API; SIGTERM (docker
stop) makes the node exit cleanly through tini, and a restarted container keeps its
data and identity (named volume); an `aofctl worker` container reaching the nodes by
container name with the worker token completes a job.

Uses the node's config layout with its four listeners (public spec.server 3000,
workers' gRPC 4000, API 5000, peers 6000, each bound to the container's fixed IP),
initial_members with the four addresses, tokens from AOF_ADMIN_TOKEN /
AOF_WORKER_TOKEN and peer certificates under /etc/aof/certs.

  deploy/tests/smoke.py [--image aof-cluster:dev]

Talks only to 127.0.0.1 (published ports) and to the containers it creates; removes
them (and their network and volumes) on exit. Every wait is bounded.
"""

import argparse
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

SECRET = "smoke-" + uuid.uuid4().hex
ADMIN_TOKEN = "smoke-admin-" + uuid.uuid4().hex
WORKER_TOKEN = "smoke-worker-" + uuid.uuid4().hex
NODES = (1, 2, 3)
HEALTHY_WITHIN_S = 120
READY_WITHIN_S = 60
STOP_GRACE_S = 30


def sh(*args, check=True, timeout=120):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}")
    return r


def http(method, url, body=None, headers=None, timeout=10):
    """(status, parsed JSON or text); connection errors raise."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_for(what, fn, within_s, every_s=0.5):
    """Polls fn() until it returns a truthy value; bounded by within_s."""
    deadline = time.monotonic() + within_s
    last = None
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
            last = v
        except (OSError, RuntimeError, ValueError, AttributeError) as e:
            last = e
        time.sleep(every_s)
    raise AssertionError(f"{what}: not within {within_s} s (last: {last!r})")


def node_config(node_id, ips):
    """The DaemonConfig of one node: four listeners, default tokens, peer TLS."""
    members = "\n".join(
        f"      - {{ id: {n}, peer_addr: \"{ips[n]}:6000\", grpc_addr: \"{ips[n]}:4000\", "
        f"api_addr: \"{ips[n]}:5000\", http_addr: \"{ips[n]}:3000\" }}"
        for n in NODES
    )
    return f"""apiVersion: aof.dev/v1
kind: DaemonConfig
metadata:
  name: aof-smoke-{node_id}
spec:
  server:
    host: "{ips[node_id]}"
    port: 3000
  platforms:
    github:
      enabled: true
      webhook_secret_env: GITHUB_WEBHOOK_SECRET
  cluster:
    node_id: {node_id}
    api_addr: "{ips[node_id]}:5000"
    grpc_addr: "{ips[node_id]}:4000"
    peer_addr: "{ips[node_id]}:6000"
    peer_tls:
      ca_file: /etc/aof/certs/ca.crt
      cert_file: "/etc/aof/certs/node{{node_id}}.crt"
      key_file: "/etc/aof/certs/node{{node_id}}.key"
    data_dir: /var/lib/aof/data
    initial_members:
{members}
"""


class Smoke:
    def __init__(self, image):
        self.image = image
        self.run_id = f"aofsmoke-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.net = self.run_id
        self.ips = {}
        self.ports = {}  # node -> published public port
        self.api_ports = {}  # node -> published API port
        self.cfgdir = None
        self.certdir = None
        self.passed = 0
        self.failed = 0

    def name(self, n):
        return f"{self.run_id}-n{n}"

    def url(self, n, path):
        """On node n's public listener."""
        return f"http://127.0.0.1:{self.ports[n]}{path}"

    def api(self, method, n, path, body=None, headers=None, token=ADMIN_TOKEN):
        """A call to node n's API listener, with the admin token."""
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        return http(method, f"http://127.0.0.1:{self.api_ports[n]}{path}", body, h)

    # -- set-up / tear-down ----------------------------------------------------------
    def create_network(self):
        # A /24 of our own (fixed IPs need a subnet); try a few in case one is taken.
        errors = []
        for third in range(200, 216):
            subnet = f"172.31.{third}.0/24"
            r = sh("docker", "network", "create", "--driver", "bridge", "--subnet", subnet, self.net, check=False)
            if r.returncode == 0:
                self.ips = {n: f"172.31.{third}.{10 + n}" for n in NODES}
                return
            errors.append(r.stderr.strip())
        raise RuntimeError(f"could not create a docker network with a free 172.31.2xx.0/24 subnet: {errors[-1]}")

    def make_certs(self):
        """The cluster CA and node certificates, made by the image's own aofctl (as
        uid 10001, so the nodes can read their keys) into a directory of ours."""
        self.certdir = tempfile.mkdtemp(prefix="aof-smoke-certs-")
        os.chmod(self.certdir, 0o777)
        sh("docker", "run", "--rm", "-v", f"{self.certdir}:/certs", self.image,
           "certs", "init", "--dir", "/certs", "--nodes", str(len(NODES)))
        for n in NODES:
            assert os.path.exists(os.path.join(self.certdir, f"node{n}.crt")), f"no certificate for node {n}"

    def write_configs(self):
        self.cfgdir = tempfile.mkdtemp(prefix="aof-smoke-")
        os.chmod(self.cfgdir, 0o755)
        for n in NODES:
            p = os.path.join(self.cfgdir, f"node{n}.yaml")
            with open(p, "w", encoding="utf-8") as f:
                f.write(node_config(n, self.ips))
            os.chmod(p, 0o644)

    def start(self, n):
        sh(
            "docker", "run", "-d", "--name", self.name(n), "--hostname", f"aof-{n}",
            "--network", self.net, "--ip", self.ips[n],
            "-p", "127.0.0.1::3000", "-p", "127.0.0.1::5000",
            "-v", f"{self.name(n)}-data:/var/lib/aof",
            "-v", f"{self.cfgdir}/node{n}.yaml:/etc/aof/node.yaml:ro",
            "-v", f"{self.certdir}:/etc/aof/certs:ro",
            "-e", f"GITHUB_WEBHOOK_SECRET={SECRET}",
            "-e", f"AOF_ADMIN_TOKEN={ADMIN_TOKEN}",
            "-e", f"AOF_WORKER_TOKEN={WORKER_TOKEN}",
            # Today's node binds its HTTP listener to its own IP, not 0.0.0.0.
            "-e", f"AOF_HEALTH_ADDR={self.ips[n]}:3000",
            self.image, "serve", "--config", "/etc/aof/node.yaml",
        )
        self.refresh_port(n)

    def refresh_port(self, n):
        def published(port):
            out = sh("docker", "port", self.name(n), f"{port}/tcp").stdout.strip().splitlines()[0]
            return int(out.rsplit(":", 1)[1])
        self.ports[n] = published(3000)
        self.api_ports[n] = published(5000)

    def cleanup(self):
        sh("docker", "rm", "-f", "-v", self.worker_name(), check=False)
        for n in NODES:
            sh("docker", "rm", "-f", "-v", self.name(n), check=False)
            sh("docker", "volume", "rm", "-f", f"{self.name(n)}-data", check=False)
        sh("docker", "network", "rm", self.net, check=False)
        if self.cfgdir:
            for n in NODES:  # only the files this run wrote
                p = os.path.join(self.cfgdir, f"node{n}.yaml")
                if os.path.exists(p):
                    os.unlink(p)
            os.rmdir(self.cfgdir)
        if self.certdir:
            # Only what `certs init` writes: ca.* and node<N>.* (owned by uid 10001).
            names = ["ca.crt", "ca.key"] + [f"node{n}.{ext}" for n in NODES for ext in ("crt", "key")]
            for name in names:
                p = os.path.join(self.certdir, name)
                if os.path.exists(p):
                    os.unlink(p)
            os.rmdir(self.certdir)

    def dump_logs(self):
        for c in [self.name(n) for n in NODES] + [self.worker_name()]:
            r = sh("docker", "logs", "--tail", "40", c, check=False)
            print(f"--- logs of {c} (last 40 lines) ---\n{r.stdout}{r.stderr}", file=sys.stderr)

    # -- checks ----------------------------------------------------------------------
    def check(self, title, fn):
        t0 = time.monotonic()
        fn()
        self.passed += 1
        print(f"smoke: ok   {title} ({time.monotonic() - t0:.1f} s)")

    def health_status(self, n):
        return sh("docker", "inspect", "-f", "{{.State.Health.Status}}", self.name(n)).stdout.strip()

    def t_help(self):
        r = sh("docker", "run", "--rm", self.image, "--help")
        assert "serve" in r.stdout and "worker" in r.stdout, r.stdout
        uid = sh("docker", "run", "--rm", "--entrypoint", "id", self.image, "-u").stdout.strip()
        assert uid == "10001", f"runs as uid {uid}, expected 10001"

    def t_start(self):
        self.create_network()
        self.make_certs()
        self.write_configs()
        for n in NODES:
            self.start(n)

    def t_healthy(self):
        for n in NODES:
            wait_for(f"node {n} HEALTHCHECK healthy", lambda n=n: self.health_status(n) == "healthy", HEALTHY_WITHIN_S)
            status, body = http("GET", self.url(n, "/health"))
            assert status == 200 and body.get("node_id") == n, f"node {n} /health: {status} {body}"
        # The HEALTHCHECK script tells a good answer from a bad one and from no listener.
        hc = lambda *a: sh("docker", "exec", *a, check=False).returncode  # noqa: E731
        assert hc(self.name(1), "aof-healthcheck", "/health") == 0, "aof-healthcheck /health failed"
        assert hc(self.name(1), "aof-healthcheck", "/no-such-path") == 1, "aof-healthcheck accepted a 404"
        assert hc("-e", "AOF_HEALTH_ADDR=127.0.0.1:1", self.name(1), "aof-healthcheck") == 1, \
            "aof-healthcheck passed with no listener"

    def ready_leader(self, n):
        status, body = http("GET", self.url(n, "/ready"))
        return body.get("leader_id") if status == 200 else None

    def t_one_cluster(self):
        leaders = {n: wait_for(f"node {n} /ready", lambda n=n: self.ready_leader(n), READY_WITHIN_S) for n in NODES}
        assert len(set(leaders.values())) == 1, f"nodes see different leaders: {leaders}"
        for n in NODES:
            status, body = self.api("GET", n, "/v1/cluster")
            assert status == 200, f"node {n} /v1/cluster: {status} {body}"
            voters = sorted(m["id"] for m in body["members"] if m["role"] == "voter")
            assert voters == list(NODES), f"node {n} sees voters {voters}"
            assert body["leader_id"] == leaders[1], f"node {n} leader {body['leader_id']} != {leaders[1]}"

    def post_webhook(self, n, delivery, secret=SECRET):
        payload = json.dumps({
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": "1" * 40,
            "repository": {"id": 1, "name": "api", "full_name": "acme/api", "owner": {"login": "acme"}},
            "sender": {"login": "octocat"},
            "commits": [],
        }).encode()
        sig = "sha256=" + hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()
        return http("POST", self.url(n, "/webhook/github"), payload, {
            "Content-Type": "application/json",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sig,
        })

    def t_listeners(self):
        status, body = http("GET", self.url(1, "/v1/cluster"))
        assert status == 404, f"the public listener serves /v1/cluster: {status} {body}"
        status, body = self.api("GET", 1, "/v1/cluster", token=None)
        assert status == 401, f"the API without a token: {status} {body}"
        status, body = self.api("GET", 1, "/v1/cluster", token=WORKER_TOKEN)
        assert status == 403, f"the API with the worker token: {status} {body}"

    def t_webhook_across_nodes(self):
        self.delivery = str(uuid.uuid4())
        status, body = self.post_webhook(2, self.delivery)
        assert status == 202, f"signed webhook on node 2: {status} {body}"
        status, body = self.api("GET", 3, f"/v1/deliveries/{self.delivery}")
        assert status == 200 and self.delivery in json.dumps(body), f"delivery on node 3: {status} {body}"
        status, body = self.post_webhook(1, str(uuid.uuid4()), secret="wrong-" + SECRET)
        assert status == 401, f"badly signed webhook: {status} {body}"

    def t_worker(self):
        trigger = (
            "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: smoke-push\nspec:\n  type: GitHub\n"
            "  config:\n    github_events: [push]\n  commands:\n    push:\n      agent: smoke-agent\n"
        )
        status, body = self.api("PUT", 1, "/v1/triggers/smoke-push", trigger.encode(), {"Content-Type": "application/yaml"})
        assert status in (200, 201), f"PUT trigger: {status} {body}"
        # The worker reaches the nodes by container name, as the compose worker does.
        endpoints = ",".join(f"grpc://{self.name(n)}:4000" for n in NODES)
        sh("docker", "run", "-d", "--name", self.worker_name(), "--network", self.net,
           "-e", f"AOF_GRPC_ENDPOINT={endpoints}", "-e", f"AOF_WORKER_TOKEN={WORKER_TOKEN}", self.image,
           "worker", "--", "/bin/sh", "-c", "cat >/dev/null; echo $AOF_JOB_ID")
        delivery = str(uuid.uuid4())
        status, body = self.post_webhook(3, delivery)
        assert status == 202 and body.get("jobs"), f"webhook with a matching trigger: {status} {body}"

        def jobs_completed():
            status, body = self.api("GET", 2, f"/v1/deliveries/{delivery}")
            jobs = body.get("jobs") if status == 200 else None
            return jobs and all(j.get("state") == "completed" for j in jobs) and body
        body = wait_for("job completed by the worker container", jobs_completed, READY_WITHIN_S)
        # Worker ids are <hostname>-<pid>; a container's hostname is its short id.
        host = sh("docker", "inspect", "-f", "{{.Config.Hostname}}", self.worker_name()).stdout.strip()
        assert f"completed by {host}-" in json.dumps(body), f"job not completed by the worker container {host}: {body}"

    def worker_name(self):
        return f"{self.run_id}-worker"

    def t_sigterm_and_restart(self):
        n = 3
        sh("docker", "stop", "-t", str(STOP_GRACE_S), self.name(n), timeout=STOP_GRACE_S + 30)
        state = json.loads(sh("docker", "inspect", "-f", "{{json .State}}", self.name(n)).stdout)
        # 0: aofctl handled SIGTERM (forwarded by tini) and exited; 137 would be the
        # SIGKILL sent after the grace period.
        assert state["ExitCode"] == 0, f"exit code after SIGTERM: {state['ExitCode']} (OOMKilled={state['OOMKilled']})"
        sh("docker", "start", self.name(n))
        self.refresh_port(n)
        wait_for("restarted node /health", lambda: http("GET", self.url(n, "/health"))[1].get("node_id") == n, HEALTHY_WITHIN_S)
        wait_for("restarted node /ready", lambda: self.ready_leader(n), READY_WITHIN_S)
        status, body = self.api("GET", n, f"/v1/deliveries/{self.delivery}?consistency=stale")
        assert status == 200 and self.delivery in json.dumps(body), f"delivery on restarted node: {status} {body}"

    def run(self):
        steps = [
            ("image runs aofctl as uid 10001", self.t_help),
            ("3 node containers start on a network of their own", self.t_start),
            ("3 nodes from mounted config files: HEALTHCHECK healthy, /health answers", self.t_healthy),
            ("one cluster over mutual TLS: all ready, same leader, 3 voters", self.t_one_cluster),
            ("public port serves no API; the API wants the admin token", self.t_listeners),
            ("signed webhook via node 2 is read on node 3; bad signature 401", self.t_webhook_across_nodes),
            ("worker container, nodes addressed by name, worker token, completes a job", self.t_worker),
            ("SIGTERM exits 0; restarted container keeps data and node id", self.t_sigterm_and_restart),
        ]
        try:
            for title, fn in steps:
                try:
                    self.check(title, fn)
                except (AssertionError, RuntimeError, OSError, KeyError, subprocess.TimeoutExpired) as e:
                    self.failed += 1
                    print(f"smoke: FAIL {title}: {e}", file=sys.stderr)
                    self.dump_logs()
                    break
        finally:
            self.cleanup()
        not_run = len(steps) - self.passed - self.failed
        suffix = f", {not_run} skipped" if not_run else ""
        print(f"smoke: {self.passed} passed, {self.failed} failed{suffix}")
        return 0 if self.failed == 0 and not_run == 0 else 1


def main():
    ap = argparse.ArgumentParser(description="Smoke test of the aof-cluster image")
    ap.add_argument("--image", default=os.environ.get("AOF_IMAGE", "aof-cluster:dev"))
    args = ap.parse_args()
    if subprocess.run(["docker", "image", "inspect", args.image], capture_output=True).returncode != 0:
        print(f"smoke: image {args.image} not found: build it with deploy/build-image.sh", file=sys.stderr)
        return 1
    return Smoke(args.image).run()


if __name__ == "__main__":
    sys.exit(main())
