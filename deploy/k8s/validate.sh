#!/usr/bin/env bash
# Validates the Kubernetes manifests offline:
#   1. `kubectl kustomize` renders the base and every overlay;
#   2. kubernetes-validate (PyPI; schemas bundled, no cluster or network needed) checks
#      every built-in object strictly (unknown fields are errors) against the oldest
#      and the newest Kubernetes version we support;
#   3. check_refs.py checks that the overlays' objects fit together (Secrets, ports,
#      selectors, Ingress/NetworkPolicy exposure, StatefulSet rules, KEDA metric names),
#      and test_check_refs.py that it catches each of those rules broken on purpose.
# The CRDs (ServiceMonitor, ScaledObject, PrometheusRule) have no bundled schema:
# kubernetes-validate reports them as unknown (allowed for exactly these kinds) and
# check_refs.py checks their fields and references instead.
#
#   deploy/k8s/validate.sh [--out DIR]     # DIR keeps the rendered YAML
#
# Secrets and certificates an overlay generates from git-ignored files are replaced by
# placeholders (from *.example files) in a temporary copy when missing.
set -euo pipefail
AOF_LOG_TAG=k8s-validate
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/../lib.sh"

K8S_VERSIONS="${AOF_K8S_VERSIONS:-1.29.0 1.37.0}"
KV_VERSION="${AOF_KUBERNETES_VALIDATE_VERSION:-1.37.0}"
CRD_KINDS="ScaledObject|ServiceMonitor|PrometheusRule"
OUT=""
case "${1:-}" in
  --out) OUT="${2:?--out needs a directory}"; mkdir -p "$OUT" ;;
  "") ;;
  *) die "unknown argument '$1' (usage: deploy/k8s/validate.sh [--out DIR])" ;;
esac

command -v kubectl >/dev/null 2>&1 || die "kubectl not found: it renders the Kustomize manifests offline (https://kubernetes.io/docs/tasks/tools/, or Debian's kubernetes-client)"
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import kubernetes_validate' >/dev/null 2>&1; then
  log "installing kubernetes-validate==$KV_VERSION (pip)"
  "$PY" -m pip install --quiet --disable-pip-version-check --no-input "kubernetes-validate==$KV_VERSION" >/dev/null \
    || die "pip install kubernetes-validate failed: install it by hand ($PY -m pip install kubernetes-validate)"
fi
"$PY" -c 'import yaml' 2>/dev/null || die "PyYAML missing for $PY (pip install pyyaml)"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/aof-k8s.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
cp -r "$AOF_ROOT/deploy/k8s" "$WORK/k8s"
[ -n "$OUT" ] || OUT="$WORK/out"
mkdir -p "$OUT"

# Placeholders for git-ignored inputs of the overlays' secretGenerators.
for overlay in "$WORK"/k8s/overlays/*/; do
  for ex in "$overlay"secrets/*.example; do
    [ -e "$ex" ] || continue
    [ -e "${ex%.example}" ] || cp "$ex" "${ex%.example}"
  done
  if [ -d "$overlay/certs" ]; then
    grep -o 'certs/[A-Za-z0-9_.-]*' "$overlay/kustomization.yaml" | sort -u | while read -r f; do
      [ -e "$overlay/$f" ] || printf 'placeholder for %s (aofctl certs init)\n' "$f" >"$overlay/$f"
    done
  fi
done

status=0
targets=("base")
for overlay in "$WORK"/k8s/overlays/*/; do targets+=("overlays/$(basename "$overlay")"); done
for t in "${targets[@]}"; do
  out="$OUT/$(echo "$t" | tr '/' '-').yaml"
  if ! kubectl kustomize "$WORK/k8s/$t" >"$out" 2>"$WORK/err"; then
    cat "$WORK/err" >&2
    die "kubectl kustomize deploy/k8s/$t failed (above)"
  fi
  log "rendered deploy/k8s/$t: $(grep -c '^kind:' "$out") objects"
  for v in $K8S_VERSIONS; do
    if ! kubernetes-validate --strict --quiet -k "$v" "$out" >"$WORK/kv" 2>&1; then
      status=1
    fi
    # Unknown kinds other than the two CRDs are errors too.
    if grep -E "Couldn't find schema" "$WORK/kv" | grep -vqE "kind ($CRD_KINDS) "; then
      status=1
    fi
    if grep -vE "Couldn't find schema for kind ($CRD_KINDS) " "$WORK/kv" | grep -q .; then
      sed "s|$WORK/out/||; s|$OUT/||" "$WORK/kv" | grep -vE "Couldn't find schema for kind ($CRD_KINDS) " >&2
      log "deploy/k8s/$t: FAILED schema validation against Kubernetes $v"
    else
      log "deploy/k8s/$t: valid against Kubernetes $v (CRDs $CRD_KINDS: checked by check_refs.py)"
    fi
  done
  if [ "$t" != base ]; then
    if ! (cd "$AOF_ROOT" && "$PY" deploy/k8s/check_refs.py "$out" --allow-policy aof-metrics-scrape); then
      status=1
    fi
    # ... and check_refs.py itself still catches each rule broken on purpose.
    if [ "$t" = overlays/example ] && ! (cd "$AOF_ROOT" && "$PY" deploy/k8s/test_check_refs.py "$out"); then
      status=1
    fi
  fi
done
[ "$status" = 0 ] || die "Kubernetes manifests: problems above"
log "Kubernetes manifests OK"
