#!/usr/bin/env python3
"""Cross-reference checks of rendered aof-cluster manifests (`kubectl kustomize` output).

Schema validation (kubernetes-validate) checks each object alone; this checks that the
objects fit together and keep the deployment's rules:

- every Secret, key, volume, port name and ServiceAccount a pod refers to exists;
- every Service, PDB and ServiceMonitor selects the pods it is meant for, by existing
  port names;
- the Ingress routes only POST /webhook/github to the public webhook port (3000);
- NetworkPolicies let nothing but the webhook port in from outside the namespace, and
  the peer port only from the nodes (policies named with --allow-policy excepted);
- the StatefulSet starts pods in parallel, has /ready and /health probes, a preStop
  hook, claims its data volume, and its pods' env names the headless Service and the
  StatefulSet it really has;
- the KEDA ScaledObject targets the worker Deployment and queries metrics the node
  really exports (names read from node/src/metrics.rs);
- the PrometheusRule carries exactly the rules of deploy/prometheus/alerts.yaml, and
  they query metrics the node exports.

  check_refs.py RENDERED.yaml [--metrics-rs node/src/metrics.rs]
                [--alerts deploy/prometheus/alerts.yaml] [--allow-policy NAME]...

Exit 0 when every check passes; otherwise each problem is printed and the exit is 1.
"""

import argparse
import re
import sys

import yaml

WEBHOOK_PORT = 3000
PEER_PORT = 6000


class Checker:
    def __init__(self, docs, metrics, allowed_policies, alert_groups=None):
        self.docs = [d for d in docs if d]
        self.metrics = metrics
        self.alert_groups = alert_groups
        self.allowed_policies = set(allowed_policies)
        self.problems = []

    def fail(self, msg):
        self.problems.append(msg)

    def of_kind(self, kind):
        return [d for d in self.docs if d.get("kind") == kind]

    def named(self, kind, name):
        for d in self.of_kind(kind):
            if d["metadata"]["name"] == name:
                return d
        return None

    # -- workloads -------------------------------------------------------------------
    def workloads(self):
        """(kind/name, object, pod template) of every pod-owning object."""
        out = []
        for kind in ("StatefulSet", "Deployment"):
            for d in self.of_kind(kind):
                out.append((f"{kind}/{d['metadata']['name']}", d, d["spec"]["template"]))
        return out

    def secret_keys(self, name):
        s = self.named("Secret", name)
        if s is None:
            return None
        return set((s.get("data") or {}).keys()) | set((s.get("stringData") or {}).keys())

    def check_pod(self, where, owner, tmpl):
        spec = tmpl["spec"]
        labels = tmpl["metadata"].get("labels", {})
        sel = owner["spec"]["selector"].get("matchLabels", {})
        if not all(labels.get(k) == v for k, v in sel.items()):
            self.fail(f"{where}: selector {sel} does not match its pod labels {labels}")
        sa = spec.get("serviceAccountName")
        if sa and self.named("ServiceAccount", sa) is None:
            self.fail(f"{where}: ServiceAccount {sa} is not defined")
        psc = spec.get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            self.fail(f"{where}: pod securityContext.runAsNonRoot must be true")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for vct in owner["spec"].get("volumeClaimTemplates", []):
            volumes[vct["metadata"]["name"]] = {"pvc": True}
        for v in volumes.values():
            sec = v.get("secret")
            if sec and self.secret_keys(sec["secretName"]) is None:
                self.fail(f"{where}: volume secret {sec['secretName']} is not defined")
        for c in spec["containers"]:
            cw = f"{where} container {c['name']}"
            image = c.get("image", "")
            if ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
                self.fail(f"{cw}: image {image!r} has no tag (set it with `images:` in the kustomization)")
            csc = c.get("securityContext", {})
            if csc.get("allowPrivilegeEscalation") is not False:
                self.fail(f"{cw}: allowPrivilegeEscalation must be false")
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", []) if "name" in p}
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes:
                    self.fail(f"{cw}: volumeMount {m['name']} has no volume")
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    keys = self.secret_keys(ref["name"])
                    if keys is None:
                        self.fail(f"{cw}: env {e['name']}: Secret {ref['name']} is not defined")
                    elif ref["key"] not in keys and not ref.get("optional"):
                        self.fail(f"{cw}: env {e['name']}: Secret {ref['name']} has no key {ref['key']}")
            for ef in c.get("envFrom", []):
                ref = ef.get("secretRef")
                if ref and self.secret_keys(ref["name"]) is None and not ref.get("optional"):
                    self.fail(f"{cw}: envFrom Secret {ref['name']} is not defined")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                hg = (c.get(probe) or {}).get("httpGet")
                if hg and isinstance(hg["port"], str) and hg["port"] not in ports:
                    self.fail(f"{cw}: {probe} port {hg['port']} is not a container port name")
        return labels

    def pods_selected_by(self, selector):
        """Container port maps of the pod templates whose labels match `selector`."""
        out = []
        for where, _owner, tmpl in self.workloads():
            labels = tmpl["metadata"].get("labels", {})
            if selector and all(labels.get(k) == v for k, v in selector.items()):
                ports = {}
                for c in tmpl["spec"]["containers"]:
                    for p in c.get("ports", []):
                        ports[p.get("name", str(p["containerPort"]))] = p["containerPort"]
                out.append((where, ports))
        return out

    def service_target_ports(self, svc, port_ref):
        """Container ports a Service port (by name or number) reaches."""
        result = set()
        for sp in svc["spec"]["ports"]:
            if port_ref not in (sp.get("name"), sp.get("port")):
                continue
            tp = sp.get("targetPort", sp["port"])
            for _where, ports in self.pods_selected_by(svc["spec"].get("selector")):
                result.add(ports.get(tp) if isinstance(tp, str) else tp)
        return result

    # -- checks ----------------------------------------------------------------------
    def check_workloads(self):
        for where, owner, tmpl in self.workloads():
            self.check_pod(where, owner, tmpl)

    def check_services(self):
        for svc in self.of_kind("Service"):
            name = svc["metadata"]["name"]
            pods = self.pods_selected_by(svc["spec"].get("selector"))
            if not pods:
                self.fail(f"Service/{name}: selects no pod template")
            for sp in svc["spec"]["ports"]:
                tp = sp.get("targetPort", sp["port"])
                for where, ports in pods:
                    if isinstance(tp, str) and tp not in ports:
                        self.fail(f"Service/{name}: targetPort {tp} is not a port name of {where}")

    def check_statefulset(self):
        for sts in self.of_kind("StatefulSet"):
            name = sts["metadata"]["name"]
            spec = sts["spec"]
            if spec.get("podManagementPolicy") != "Parallel":
                self.fail(f"StatefulSet/{name}: podManagementPolicy must be Parallel (readiness needs a quorum)")
            headless = self.named("Service", spec["serviceName"])
            if headless is None:
                self.fail(f"StatefulSet/{name}: serviceName {spec['serviceName']} is not a Service")
            else:
                if headless["spec"].get("clusterIP") != "None":
                    self.fail(f"Service/{spec['serviceName']}: must be headless (clusterIP: None)")
                if headless["spec"].get("publishNotReadyAddresses") is not True:
                    self.fail(f"Service/{spec['serviceName']}: publishNotReadyAddresses must be true (peers find each other before any is Ready)")
            if not spec.get("volumeClaimTemplates"):
                self.fail(f"StatefulSet/{name}: no volumeClaimTemplates")
            c = spec["template"]["spec"]["containers"][0]
            if (c.get("readinessProbe") or {}).get("httpGet", {}).get("path") != "/ready":
                self.fail(f"StatefulSet/{name}: readinessProbe must GET /ready")
            if (c.get("livenessProbe") or {}).get("httpGet", {}).get("path") != "/health":
                self.fail(f"StatefulSet/{name}: livenessProbe must GET /health")
            if not (c.get("lifecycle") or {}).get("preStop"):
                self.fail(f"StatefulSet/{name}: no preStop hook (clean scale-down)")
            env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
            for k, v in env.items():
                for m in re.finditer(r"\)\.([a-z0-9-]+)\.\$\(POD_NAMESPACE\)", v):
                    if m.group(1) != spec["serviceName"]:
                        self.fail(f"StatefulSet/{name}: env {k} names Service {m.group(1)}, the StatefulSet's is {spec['serviceName']}")
                m = re.match(r"([a-z0-9-]+)\.\$\(POD_NAMESPACE\)", v)
                if m and k.endswith("DISCOVERY__DNS") and m.group(1) != spec["serviceName"]:
                    self.fail(f"StatefulSet/{name}: env {k} names Service {m.group(1)}, the StatefulSet's is {spec['serviceName']}")
            if env.get("AOF_STATEFULSET") not in (None, name):
                self.fail(f"StatefulSet/{name}: env AOF_STATEFULSET is {env['AOF_STATEFULSET']!r}")
            for role in self.of_kind("Role"):
                for rule in role.get("rules", []):
                    if "statefulsets" in rule.get("resources", []) and name not in rule.get("resourceNames", [name]):
                        self.fail(f"Role/{role['metadata']['name']}: resourceNames do not include StatefulSet {name}")

    def check_pdb(self):
        pdbs = self.of_kind("PodDisruptionBudget")
        if not pdbs:
            self.fail("no PodDisruptionBudget")
        for pdb in pdbs:
            n = pdb["metadata"]["name"]
            if pdb["spec"].get("maxUnavailable") != 1:
                self.fail(f"PodDisruptionBudget/{n}: maxUnavailable must be 1")
            sel = pdb["spec"]["selector"].get("matchLabels", {})
            if not any(w.startswith("StatefulSet/") for w, _ in self.pods_selected_by(sel)):
                self.fail(f"PodDisruptionBudget/{n}: does not select the StatefulSet's pods")

    def check_ingress(self):
        for ing in self.of_kind("Ingress"):
            n = ing["metadata"]["name"]
            for rule in ing["spec"].get("rules", []):
                for p in rule.get("http", {}).get("paths", []):
                    if p["path"] != "/webhook/github":
                        self.fail(f"Ingress/{n}: path {p['path']} exposed (only /webhook/github may be)")
                    be = p["backend"]["service"]
                    svc = self.named("Service", be["name"])
                    if svc is None:
                        self.fail(f"Ingress/{n}: backend Service {be['name']} is not defined")
                        continue
                    port_ref = be["port"].get("name", be["port"].get("number"))
                    reached = self.service_target_ports(svc, port_ref)
                    if reached != {WEBHOOK_PORT}:
                        self.fail(f"Ingress/{n}: backend {be['name']}:{port_ref} reaches container ports {sorted(map(str, reached))}, not only {WEBHOOK_PORT}")
            if ing["spec"].get("defaultBackend"):
                self.fail(f"Ingress/{n}: a defaultBackend exposes more than the webhook path")

    def check_network_policies(self):
        node_pods = [(w, p) for w, p in self.pods_selected_by({"app.kubernetes.io/component": "node"})]
        if not node_pods:
            self.fail("no node pods found (label app.kubernetes.io/component=node)")
            return
        node_ports = node_pods[0][1]
        node_labels = next(t["metadata"]["labels"] for w, _o, t in self.workloads() if w == node_pods[0][0])
        covered = False
        for np in self.of_kind("NetworkPolicy"):
            n = np["metadata"]["name"]
            sel = np["spec"]["podSelector"].get("matchLabels", {})
            if not all(node_labels.get(k) == v for k, v in sel.items()):
                continue
            covered = covered or "Ingress" in np["spec"].get("policyTypes", [])
            for rule in np["spec"].get("ingress", []):
                ports = set()
                for p in rule.get("ports", []) or [{"port": "*"}]:
                    port = p.get("port", "*")
                    ports.add(node_ports.get(port, port) if isinstance(port, str) else port)
                peers = rule.get("from")
                outside = not peers or any("namespaceSelector" in f or "ipBlock" in f for f in peers)
                if outside and ports != {WEBHOOK_PORT} and n not in self.allowed_policies:
                    self.fail(f"NetworkPolicy/{n}: ports {sorted(map(str, ports))} open to other namespaces (only {WEBHOOK_PORT} may be)")
                if PEER_PORT in ports or "*" in ports:
                    only_nodes = peers and all(
                        "namespaceSelector" not in f and "ipBlock" not in f
                        and all(node_labels.get(k) == v for k, v in f.get("podSelector", {}).get("matchLabels", {}).items())
                        and f.get("podSelector", {}).get("matchLabels")
                        for f in peers
                    )
                    if not only_nodes:
                        self.fail(f"NetworkPolicy/{n}: peer port {PEER_PORT} open to more than the nodes")
        if not covered:
            self.fail("no NetworkPolicy restricts ingress to the node pods")

    def check_servicemonitor(self):
        for sm in self.of_kind("ServiceMonitor"):
            n = sm["metadata"]["name"]
            sel = sm["spec"]["selector"].get("matchLabels", {})
            svcs = [s for s in self.of_kind("Service")
                    if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            if not svcs:
                self.fail(f"ServiceMonitor/{n}: selects no Service")
            for ep in sm["spec"].get("endpoints", []):
                for s in svcs:
                    if ep.get("port") not in [p.get("name") for p in s["spec"]["ports"]]:
                        self.fail(f"ServiceMonitor/{n}: Service {s['metadata']['name']} has no port named {ep.get('port')}")
                cred = (ep.get("authorization") or {}).get("credentials")
                if cred:
                    keys = self.secret_keys(cred["name"])
                    if keys is None or cred["key"] not in keys:
                        self.fail(f"ServiceMonitor/{n}: Secret {cred['name']} key {cred['key']} is not defined")

    def check_scaledobject(self):
        sos = self.of_kind("ScaledObject")
        if not sos:
            self.fail("no ScaledObject for the workers")
        for so in sos:
            n = so["metadata"]["name"]
            ns = so["metadata"].get("namespace")
            ref = so["spec"]["scaleTargetRef"]
            if self.named(ref.get("kind", "Deployment"), ref["name"]) is None:
                self.fail(f"ScaledObject/{n}: target {ref.get('kind', 'Deployment')}/{ref['name']} is not defined")
            triggers = so["spec"].get("triggers", [])
            if not triggers:
                self.fail(f"ScaledObject/{n}: no triggers")
            for t in triggers:
                if t.get("type") != "prometheus":
                    continue
                q = t["metadata"]["query"]
                for m in re.findall(r"\baof_[a-z0-9_]+", q):
                    if not self.metric_exists(m):
                        self.fail(f"ScaledObject/{n}: query uses {m}, which the node does not export (see node/src/metrics.rs)")
                for m in re.findall(r'namespace="([^"]*)"', q):
                    if ns and m != ns:
                        self.fail(f"ScaledObject/{n}: query filters namespace={m!r} but the object is in {ns!r}")
                if "threshold" not in t["metadata"]:
                    self.fail(f"ScaledObject/{n}: prometheus trigger without threshold")

    def check_prometheusrule(self):
        rules = self.of_kind("PrometheusRule")
        if not rules:
            self.fail("no PrometheusRule with the alert rules (deploy/k8s/base/prometheusrule.yaml)")
        for pr in rules:
            n = pr["metadata"]["name"]
            groups = pr["spec"].get("groups", [])
            if self.alert_groups is not None and groups != self.alert_groups:
                self.fail(f"PrometheusRule/{n}: groups differ from deploy/prometheus/alerts.yaml (copy them over)")
            for g in groups:
                for r in g.get("rules", []):
                    for m in re.findall(r"\baof_[a-z0-9_]+", str(r.get("expr", ""))):
                        if not self.metric_exists(m):
                            self.fail(f"PrometheusRule/{n}: rule {r.get('alert')} uses {m}, which the node does not export (see node/src/metrics.rs)")

    def metric_exists(self, name):
        for base in self.metrics:
            full = "aof_" + base
            if name in (full, full + "_total", full + "_bucket", full + "_sum", full + "_count"):
                return True
        return False

    def run(self):
        self.check_workloads()
        self.check_services()
        self.check_statefulset()
        self.check_pdb()
        self.check_ingress()
        self.check_network_policies()
        self.check_servicemonitor()
        self.check_scaledobject()
        self.check_prometheusrule()
        return self.problems


def registered_metrics(path):
    src = open(path, encoding="utf-8").read()
    names = re.findall(r'\.register\(\s*"([a-z0-9_]+)"', src)
    if not names:
        sys.exit(f"check_refs: no metric registrations found in {path}")
    return names


def alert_groups(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)["groups"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rendered")
    ap.add_argument("--metrics-rs", default="node/src/metrics.rs")
    ap.add_argument("--alerts", default="deploy/prometheus/alerts.yaml")
    ap.add_argument("--allow-policy", action="append", default=[])
    args = ap.parse_args()
    with open(args.rendered, encoding="utf-8") as f:
        docs = list(yaml.safe_load_all(f))
    problems = Checker(docs, registered_metrics(args.metrics_rs), args.allow_policy, alert_groups(args.alerts)).run()
    for p in problems:
        print(f"check_refs: {args.rendered}: {p}", file=sys.stderr)
    kinds = sorted({d.get("kind") for d in docs if d})
    if problems:
        print(f"check_refs: {len(problems)} problem(s) in {len(docs)} objects", file=sys.stderr)
        return 1
    print(f"check_refs: {args.rendered}: {len(docs)} objects ({', '.join(kinds)}) consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
