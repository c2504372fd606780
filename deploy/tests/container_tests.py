#!/usr/bin/env python3
"""Container tests of aof-cluster: deploy/docker-compose.yml as users run it.

  deploy/tests/container_tests.py [--image aof-cluster:dev] [--only NAME[,NAME]] [--rate N]

  env_only         nodes configured by environment variables alone (no config file, no
                   --config), started one at a time in three orders (two fixed, one
                   random, its seed printed): the first alone never becomes ready (no
                   one-node cluster); then ONE cluster, voters {1,2,3}, on every node the
                   same leader and members; a webhook posted to aof-1 is read on aof-3
  kill             `docker kill` (SIGKILL, no preStop) of the leader: it stays a voting
                   member, the two others elect a leader and answer webhooks 202; started
                   again it catches up (applied >= the leader's commit, every delivery
                   readable on it)
  rolling_restart  a retrying sender posts signed deliveries at --rate/s to all three
                   webhook ports; aof-1, aof-2, aof-3 are restarted one at a time with
                   SIGTERM (`stop -t 60`, exit code 0, `start`), each after the previous one is ready and
                   caught up: no delivery fails, each is stored exactly once (status API),
                   every job is completed by the worker container; prints the numbers
                   (and writes target/container-tests/rolling-restart.json)
  scale_up         aof-4 (profile `scale`) started with no command joins and becomes a
                   voter and has every earlier delivery; `stop` (SIGTERM, with
                   spec.cluster.leave_on_shutdown) makes it leave: members {1,2,3} again
  recreate         a follower recreated (`up -d --force-recreate`) while another container
                   holds its old IP: it comes back with a new IP, the same node id and
                   data, a voter at aof-N:6000, and the leader replicates to it by name

Each test runs under a compose project of its own (aofct-<test>-<pid>) with free host
ports and random tokens, always ends with `down -v`, and prints every container's log
when it fails. Talks only to 127.0.0.1 and to its own containers. Needs Docker and
compose (v1 `docker-compose` or the v2 plugin) and the image (deploy/build-image.sh).
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Compose, LeaderWatch, Sender, http, sh, wait_until  # noqa: E402

NODES = (1, 2, 3)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# More than the election timeout (openraft's default election timeout is < 2 s here).
ALONE_WINDOW_S = 5
FORM_WITHIN_S = 60
TRIGGER = (
    "apiVersion: aof.dev/v1\nkind: Trigger\nmetadata:\n  name: ct-push\nspec:\n  type: GitHub\n"
    "  config:\n    github_events: [push]\n  commands:\n    push:\n      agent: ct-agent\n"
)


def svc(n):
    return f"aof-{n}"


def voters_and_leader(c, n):
    body = c.cluster(n)
    voters = sorted(m["id"] for m in body["members"] if m["role"] == "voter")
    members = sorted((m["id"], m["role"], m["peer_addr"]) for m in body["members"])
    return voters, body["leader_id"], members


def assert_one_cluster(c, nodes, voters=NODES):
    """Every node reports the same leader and member list, with these voters."""
    views = {n: voters_and_leader(c, n) for n in nodes}
    first = views[nodes[0]]
    for n, v in views.items():
        assert v[0] == list(voters), f"node {n} sees voters {v[0]}, expected {list(voters)}"
        assert v[1] == first[1] and v[2] == first[2], f"nodes disagree: {views}"
    return first[1]


def no_config_file(c, nodes):
    """The node containers run `serve` without --config and mount no config file."""
    for n in nodes:
        info = c.inspect(svc(n))
        args = info["Config"]["Cmd"] or []
        assert "--config" not in args and "-c" not in args, f"aof-{n} runs {args}"
        for m in info["Mounts"]:
            assert m["Type"] == "volume", f"aof-{n} mounts a {m['Type']} {m.get('Source')} at {m['Destination']}"
            assert m["Destination"] in ("/var/lib/aof", "/etc/aof/certs"), f"aof-{n} mounts {m['Destination']}"
        env = info["Config"]["Env"]
        assert f"AOF__CLUSTER__NODE_ID={n}" in env, f"aof-{n}: no AOF__CLUSTER__NODE_ID in its environment"


def caught_up(c, n, leader):
    """Node n has applied at least the leader's commit index (read now)."""
    target = c.cluster(leader)["commit_index"]
    applied = c.cluster(n, stale=True)["last_applied"]
    return applied >= target and applied


# --- tests -----------------------------------------------------------------------------

def t_env_only(image, args):
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rnd = random.Random(seed)
    shuffled = list(NODES)
    rnd.shuffle(shuffled)
    orders = [[1, 2, 3], [3, 2, 1], shuffled]
    print(f"  env_only: orders {orders} (random order from seed {seed}; --seed {seed} repeats it)")
    for i, order in enumerate(orders):
        c = Compose(f"envonly{i}", image)
        with project(c):
            c.certs()
            first = order[0]
            c.up(svc(first), no_deps=True)
            no_config_file(c, [first])
            wait_until(f"aof-{first} /health", lambda: c.health(first), 60)
            # Alone, the node must never form a (one-node) cluster.
            t_end = time.monotonic() + ALONE_WINDOW_S
            polls = 0
            while time.monotonic() < t_end:
                status, body = http("GET", c.url(first, "/ready"), timeout=3)
                assert status == 503, f"aof-{first} alone answered /ready {status} {body}: a one-node cluster"
                polls += 1
                time.sleep(0.25)
            assert c.cluster(first, stale=True)["members"] == [], f"aof-{first} alone has members"
            for n in order[1:]:
                time.sleep(rnd.uniform(0, 3))
                c.up(svc(n), no_deps=True)
            no_config_file(c, NODES)
            c.wait_ready(NODES, FORM_WITHIN_S)
            leader = wait_until("one cluster seen alike by every node", lambda: assert_one_cluster(c, NODES), 30)
            d = str(uuid.uuid4())
            status, body = c.post(1, d)
            assert status == 202, f"webhook on aof-1: {status} {body}"
            assert c.delivery(3, d), f"delivery {d} not read on aof-3"
            print(f"  env_only: order {order}: alone {polls} polls not ready, then one cluster (leader {leader})")


def t_kill(image, args):
    c = Compose("kill", image)
    with project(c):
        c.up(*[svc(n) for n in NODES])
        c.wait_ready(NODES, FORM_WITHIN_S)
        leader = wait_until("one cluster", lambda: assert_one_cluster(c, NODES), 30)
        before = [str(uuid.uuid4()) for _ in range(20)]
        for i, d in enumerate(before):
            status, body = c.post(NODES[i % 3], d)
            assert status == 202, f"webhook {d}: {status} {body}"
        c.kill(svc(leader))
        wait_until(f"aof-{leader} exited 137 (SIGKILL)", lambda: c.exit_code(svc(leader)) == 137, 10)
        rest = [n for n in NODES if n != leader]
        new_leader = wait_until(
            "the two others elect a new leader",
            lambda: (lambda ls: ls[0] if ls[0] not in (None, leader) and ls[0] == ls[1] else None)(
                [c.cluster(n)["leader_id"] for n in rest]),
            30)
        after = [str(uuid.uuid4()) for _ in range(20)]
        for i, d in enumerate(after):
            status, body = c.post(rest[i % 2], d)
            assert status == 202, f"webhook {d} on aof-{rest[i % 2]} with aof-{leader} killed: {status} {body}"
        # Killed is not leaving: still a voter, for a window longer than any timeout.
        t_end = time.monotonic() + 10
        while time.monotonic() < t_end:
            voters, _, _ = voters_and_leader(c, new_leader)
            assert voters == list(NODES), f"voters {voters} with aof-{leader} killed: it must stay a member"
            time.sleep(1)
        c.start(svc(leader))
        c.wait_ready([leader], 90)
        wait_until(f"aof-{leader} caught up", lambda: caught_up(c, leader, c.cluster(rest[0])["leader_id"]), 60)
        missing = [d for d in before + after if not c.delivery(leader, d, stale=True)]
        assert not missing, f"{len(missing)} deliveries missing on the restarted aof-{leader}: {missing[:3]}"
        assert_one_cluster(c, NODES)
        print(f"  kill: aof-{leader} (leader) killed: aof-{new_leader} led, 20 webhooks 202 meanwhile; "
              f"restarted, it caught up and has all 40")


def t_rolling_restart(image, args):
    c = Compose("rolling", image)
    with project(c):
        c.up(*[svc(n) for n in NODES], "worker")
        c.wait_ready(NODES, FORM_WITHIN_S)
        wait_until("one cluster", lambda: assert_one_cluster(c, NODES), 30)
        status, body = c.api(1, "PUT", "/v1/triggers/ct-push", TRIGGER.encode(), {"Content-Type": "application/yaml"})
        assert status in (200, 201), f"PUT trigger: {status} {body}"
        sender = Sender(c, NODES, rate=args.rate)
        watch = LeaderWatch(c, NODES)
        roll = []
        watch.start()
        sender.start()
        try:
            time.sleep(args.settle)
            t_roll = time.monotonic()
            for n in NODES:
                leader_before = c.ready(n)
                t0 = time.monotonic()
                c.stop(svc(n), t=60)
                t_stopped = time.monotonic()
                code = c.exit_code(svc(n))
                assert code == 0, (f"aof-{n} exit code {code} after SIGTERM: it did not drain and exit "
                                   f"within the 60 s grace period ({t_stopped - t0:.1f} s)")
                c.start(svc(n))
                c.wait_ready([n], 90)
                t_ready = time.monotonic()
                leader = wait_until("a leader", lambda: c.cluster(n)["leader_id"], 30)
                wait_until(f"aof-{n} caught up", lambda n=n, leader=leader: caught_up(c, n, leader), 60)
                roll.append({"node": n, "was_leader": leader_before == n,
                             "sigterm_to_exit_s": round(t_stopped - t0, 2),
                             "stop_to_ready_s": round(t_ready - t0, 2),
                             "stop_to_caught_up_s": round(time.monotonic() - t0, 2)})
                print(f"  rolling_restart: aof-{n} restarted{' (was leader)' if leader_before == n else ''}: "
                      f"ready after {t_ready - t0:.1f} s")
            roll_s = time.monotonic() - t_roll
            time.sleep(args.settle)
        finally:
            try:
                sender.stop()
            finally:
                watch.stop()
        stats = sender.stats()
        failed = [d for d in sender.deliveries if d.status != "accepted"]
        assert not failed, f"{len(failed)} deliveries failed after retries, e.g. {failed[0].id}: {failed[0].outcomes}"
        # Exactly once: every delivery id is one event, and there is no other event.
        events = c.all_events(1)
        by_delivery = {}
        for e in events:
            by_delivery[e["delivery_id"]] = by_delivery.get(e["delivery_id"], 0) + 1
        sent = {d.id for d in sender.deliveries}
        dup = {k: v for k, v in by_delivery.items() if v != 1}
        assert not dup, f"deliveries stored more than once: {list(dup.items())[:3]}"
        missing = sent - set(by_delivery)
        assert not missing, f"{len(missing)} accepted deliveries not stored, e.g. {sorted(missing)[:3]}"
        extra = set(by_delivery) - sent
        assert not extra, f"events for deliveries never sent: {sorted(extra)[:3]}"
        probe = sender.deliveries[:: max(1, len(sender.deliveries) // 20)]
        for d in probe:
            for n in NODES:
                assert c.delivery(n, d.id), f"delivery {d.id} not read on aof-{n}"

        def jobs_not_completed():
            evs = c.all_events(2)
            not_done = [e for e in evs if not e["jobs"] or any(j["state"] != "completed" for j in e["jobs"])]
            if not_done:
                raise RuntimeError(f"{len(not_done)} events with jobs not completed, e.g. {not_done[0]}")
            return True
        wait_until("every event's job completed by the worker", jobs_not_completed, 120, every_s=2)
        assert_one_cluster(c, NODES)
        result = {
            "command": f"python3 deploy/tests/container_tests.py --only rolling_restart --rate {args.rate}",
            "image": image,
            "rate_per_s": args.rate,
            "roll_s": round(roll_s, 1),
            "members": roll,
            "time_no_node_named_a_leader_s": round(watch.leaderless_s, 2),
            "watch_samples": watch.samples,
            "leader_by_term": {str(t): l for t, l in sorted(watch.terms.items())},
            "events_stored": len(events),
            **stats,
        }
        out = os.path.join(ROOT, "target", "container-tests")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "rolling-restart.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        print("  rolling_restart: " + json.dumps(result))


def t_scale_up(image, args):
    c = Compose("scaleup", image, profiles=["scale"])
    with project(c):
        c.up(*[svc(n) for n in NODES])
        c.wait_ready(NODES, FORM_WITHIN_S)
        leader = wait_until("one cluster", lambda: assert_one_cluster(c, NODES), 30)
        ds = [str(uuid.uuid4()) for _ in range(50)]
        for i, d in enumerate(ds):
            status, body = c.post(NODES[i % 3], d)
            assert status == 202, f"webhook {d}: {status} {body}"
        c.up("aof-4", no_deps=True)
        no_config_file(c, [4])

        def four_is_voter():
            lead = c.cluster(1)["leader_id"]
            return any(m["id"] == 4 and m["role"] == "voter" for m in c.cluster(lead)["members"]) and lead
        leader = wait_until("aof-4 a voter (no command run)", four_is_voter, 60)
        c.wait_ready([4], 60)
        missing = [d for d in ds if not c.delivery(4, d, stale=True)]
        assert not missing, f"{len(missing)} deliveries missing on aof-4: {missing[:3]}"
        # Scale in: SIGTERM with leave_on_shutdown drains, leaves and exits 0.
        c.stop("aof-4", t=60)
        assert c.exit_code("aof-4") == 0, f"aof-4 exit code {c.exit_code('aof-4')} after SIGTERM"
        wait_until("members {1,2,3} after aof-4 left",
                   lambda: sorted(m["id"] for m in c.cluster(1)["members"]) == list(NODES), 30)
        assert_one_cluster(c, NODES)
        print(f"  scale_up: aof-4 joined as voter (leader aof-{leader}) with all 50 deliveries; stopped, it left")


def free_subnet():
    """A /24 of 172.30.0.0/16 that no docker network uses (the test pins its network to
    it, so it knows which address a recreated container could get)."""
    used = set()
    for net in sh(["docker", "network", "ls", "-q"]).stdout.split():
        cfg = json.loads(sh(["docker", "network", "inspect", net]).stdout)[0].get("IPAM", {}).get("Config") or []
        used.update(c.get("Subnet") for c in cfg)
    for third in range(rnd_start := random.randrange(256), rnd_start + 256):
        subnet = f"172.30.{third % 256}.0/24"
        if subnet not in used:
            return subnet
    raise RuntimeError("no free /24 in 172.30.0.0/16 for the test network")


def t_recreate(image, args):
    subnet = free_subnet()
    override = f"networks:\n  aof:\n    ipam:\n      config:\n        - subnet: {subnet}\n"
    c = Compose("recreate", image, override=override)
    squatter = f"{c.project}-squatter"
    with project(c):
        try:
            c.up(*[svc(n) for n in NODES])
            c.wait_ready(NODES, FORM_WITHIN_S)
            leader = wait_until("one cluster", lambda: assert_one_cluster(c, NODES), 30)
            # A follower: the leader must reach it at its new address by name.
            v = min(n for n in NODES if n != leader)
            first = [str(uuid.uuid4()) for _ in range(20)]
            for i, d in enumerate(first):
                status, body = c.post(NODES[i % 3], d)
                assert status == 202, f"webhook {d}: {status} {body}"
            old_ip = c.ip_of(svc(v))
            c.stop(svc(v), t=60)
            # Someone else takes the old address, so the new container cannot get it back.
            sh(["docker", "run", "-d", "--name", squatter, "--network", c.network(), "--ip", old_ip,
                "--entrypoint", "sleep", image, "600"])
            c.cmd("up", "-d", "--force-recreate", "--no-deps", svc(v), timeout=120)
            new_ip = c.ip_of(svc(v))
            assert new_ip != old_ip, f"aof-{v} got its old IP {old_ip} back"
            wait_until(f"aof-{v} /health says node {v} (identity kept)", lambda: c.health(v), 60)
            # Its data came along (a stale read, before it even caught up).
            wait_until(f"aof-{v} has the 20 earlier deliveries (data kept)",
                       lambda: all(c.delivery(v, d, stale=True) for d in first), 10)
            c.wait_ready([v], 60)
            members = {m["id"]: m for m in c.cluster(leader)["members"]}
            assert members[v]["role"] == "voter" and members[v]["peer_addr"] == f"aof-{v}:6000", members[v]
            second = [str(uuid.uuid4()) for _ in range(20)]
            for d in second:
                status, body = c.post(leader, d)
                assert status == 202, f"webhook {d} on aof-{leader}: {status} {body}"
            wait_until(f"the 20 new deliveries replicated to aof-{v} at its new IP",
                       lambda: all(c.delivery(v, d, stale=True) for d in second), 30)
            assert_one_cluster(c, NODES)
            print(f"  recreate: aof-{v} {old_ip} -> {new_ip}: same node id and data, a voter, "
                  f"reached by name from leader aof-{leader}")
        finally:
            sh(["docker", "rm", "-f", "-v", squatter], check=False)


TESTS = {
    "env_only": t_env_only,
    "kill": t_kill,
    "rolling_restart": t_rolling_restart,
    "scale_up": t_scale_up,
    "recreate": t_recreate,
}


class project:
    """`with project(c):` — `down -v` always; every container's log on failure."""

    def __init__(self, c):
        self.c = c

    def __enter__(self):
        self.c.down()  # a leftover of an interrupted run with the same pid
        return self.c

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is not None:
                self.c.print_logs()
        finally:
            self.c.close()
        return False


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image", default=os.environ.get("AOF_IMAGE", "aof-cluster:dev"))
    ap.add_argument("--only", default="", help="comma-separated test names: " + ", ".join(TESTS))
    ap.add_argument("--seed", type=int, default=None, help="seed of env_only's random start order")
    ap.add_argument("--rate", type=float, default=20.0, help="rolling_restart: deliveries per second")
    ap.add_argument("--settle", type=float, default=10.0, help="rolling_restart: seconds of load before and after the roll")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(TESTS)
    unknown = [n for n in names if n not in TESTS]
    if unknown:
        ap.error(f"unknown test(s) {unknown}; known: {', '.join(TESTS)}")
    if subprocess.run(["docker", "image", "inspect", args.image], capture_output=True).returncode != 0:
        print(f"container-tests: image {args.image} not found: build it with deploy/build-image.sh", file=sys.stderr)
        return 1
    # SIGTERM (CI's timeout) unwinds through the `down -v` of the running test.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    passed = failed = 0
    for name in names:
        t0 = time.monotonic()
        print(f"container-tests: run  {name}", flush=True)
        try:
            TESTS[name](args.image, args)
            passed += 1
            print(f"container-tests: ok   {name} ({time.monotonic() - t0:.1f} s)", flush=True)
        except (AssertionError, RuntimeError, OSError, KeyError, subprocess.TimeoutExpired) as e:
            failed += 1
            traceback.print_exc()
            print(f"container-tests: FAIL {name} ({time.monotonic() - t0:.1f} s): {e}", flush=True)
    print(f"container-tests: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
