#!/usr/bin/env python3
"""Proves check_refs.py catches what it is meant to: each case breaks one rule in a copy
of a rendered overlay (which must pass unchanged) and expects a problem naming it.

  test_check_refs.py RENDERED.yaml [--metrics-rs node/src/metrics.rs] [--alerts deploy/prometheus/alerts.yaml]
"""

import argparse
import copy
import os
import sys

import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_refs import Checker, alert_groups, registered_metrics  # noqa: E402


def find(docs, kind, name):
    for d in docs:
        if d and d.get("kind") == kind and d["metadata"]["name"] == name:
            return d
    raise KeyError(f"{kind}/{name} not in the rendered manifests")


def node_container(docs):
    return find(docs, "StatefulSet", "aof")["spec"]["template"]["spec"]["containers"][0]


def node_policy_rule(docs, port):
    for rule in find(docs, "NetworkPolicy", "aof-node")["spec"]["ingress"]:
        if any(p.get("port") == port for p in rule.get("ports", [])):
            return rule
    raise KeyError(f"no aof-node ingress rule for port {port}")


def set_env(docs, name, value):
    for e in node_container(docs)["env"]:
        if e["name"] == name:
            e["value"] = value
            return
    raise KeyError(name)


# (name, mutation, substring expected in a reported problem)
CASES = [
    ("ingress exposes /", lambda d: find(d, "Ingress", "aof-webhook")["spec"]["rules"][0]["http"]["paths"][0].update(path="/"), "path / exposed"),
    ("webhook Service reaches the API port", lambda d: find(d, "Service", "aof-webhook")["spec"]["ports"][0].update(targetPort="api"), "not only 3000"),
    ("API port open to all namespaces", lambda d: node_policy_rule(d, "api").pop("from"), "open to other namespaces"),
    ("peer port open to the namespace", lambda d: node_policy_rule(d, "peer").update({"from": [{"podSelector": {}}]}), "peer port 6000 open"),
    ("no NetworkPolicy on nodes", lambda d: [d.remove(find(d, "NetworkPolicy", n)) for n in ("aof-node", "aof-metrics-scrape")], "no NetworkPolicy restricts"),
    ("unknown metric in KEDA query", lambda d: find(d, "ScaledObject", "aof-worker")["spec"]["triggers"][0]["metadata"].update(query="sum(aof_queue_depth)"), "aof_queue_depth"),
    ("KEDA query in another namespace", lambda d: find(d, "ScaledObject", "aof-worker")["spec"]["triggers"][0]["metadata"].update(query='max(aof_queue_jobs{namespace="default"})'), "namespace='default'"),
    ("KEDA target missing", lambda d: find(d, "ScaledObject", "aof-worker")["spec"]["scaleTargetRef"].update(name="workers"), "Deployment/workers"),
    ("secret key missing", lambda d: find(d, "Secret", "aof-tokens")["data"].pop("AOF_WORKER_TOKEN"), "no key AOF_WORKER_TOKEN"),
    ("peer certs secret missing", lambda d: d.remove(find(d, "Secret", "aof-peer-certs")), "aof-peer-certs"),
    ("ordered pod start", lambda d: find(d, "StatefulSet", "aof")["spec"].update(podManagementPolicy="OrderedReady"), "Parallel"),
    ("headless hides not-ready pods", lambda d: find(d, "Service", "aof-headless")["spec"].update(publishNotReadyAddresses=False), "publishNotReadyAddresses"),
    ("PDB allows two down", lambda d: find(d, "PodDisruptionBudget", "aof")["spec"].update(maxUnavailable=2), "maxUnavailable must be 1"),
    ("readiness on /health", lambda d: node_container(d)["readinessProbe"]["httpGet"].update(path="/health"), "readinessProbe must GET /ready"),
    ("no preStop", lambda d: node_container(d).pop("lifecycle"), "preStop"),
    ("probe on unknown port", lambda d: node_container(d)["livenessProbe"]["httpGet"].update(port="http"), "livenessProbe port http"),
    ("ServiceMonitor port name", lambda d: find(d, "ServiceMonitor", "aof")["spec"]["endpoints"][0].update(port="metrics"), "no port named metrics"),
    ("discovery names another Service", lambda d: set_env(d, "AOF__CLUSTER__DISCOVERY__DNS", "aof-peers.$(POD_NAMESPACE).svc:6000"), "names Service aof-peers"),
    ("advertised name of another Service", lambda d: set_env(d, "AOF__CLUSTER__ADVERTISE__PEER_ADDR", "$(POD_NAME).aof.$(POD_NAMESPACE).svc:6000"), "names Service aof,"),
    ("image without tag", lambda d: node_container(d).update(image="aof-cluster"), "has no tag"),
    ("alert rule changed in the PrometheusRule only", lambda d: find(d, "PrometheusRule", "aof")["spec"]["groups"][0]["rules"][0].update(expr="aof_raft_is_leader < 1"), "differ from deploy/prometheus/alerts.yaml"),
    ("unknown metric in an alert rule", lambda d: find(d, "PrometheusRule", "aof")["spec"]["groups"][0]["rules"][0].update(expr="aof_raft_leader == 0"), "uses aof_raft_leader,"),
    ("no PrometheusRule", lambda d: d.remove(find(d, "PrometheusRule", "aof")), "no PrometheusRule"),
    ("root pod", lambda d: find(d, "Deployment", "aof-worker")["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("rendered")
    ap.add_argument("--metrics-rs", default="node/src/metrics.rs")
    ap.add_argument("--alerts", default="deploy/prometheus/alerts.yaml")
    args = ap.parse_args()
    metrics = registered_metrics(args.metrics_rs)
    groups = alert_groups(args.alerts)
    with open(args.rendered, encoding="utf-8") as f:
        original = [d for d in yaml.safe_load_all(f) if d]
    passed = failed = 0
    base = Checker(copy.deepcopy(original), metrics, ["aof-metrics-scrape"], groups).run()
    if base:
        print(f"FAIL unchanged manifests: {base}")
        failed += 1
    else:
        passed += 1
    for name, mutate, expect in CASES:
        docs = copy.deepcopy(original)
        mutate(docs)
        problems = Checker(docs, metrics, ["aof-metrics-scrape"], groups).run()
        if any(expect in p for p in problems):
            passed += 1
        else:
            failed += 1
            print(f"FAIL {name}: expected a problem containing {expect!r}, got {problems}")
    print(f"check_refs self-test: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
