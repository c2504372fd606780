#!/usr/bin/env bash
# CI checks of the deploy/ artifacts. Call it after `cargo build` (it reuses that binary):
#
#   deploy/ci.sh [--profile debug|release] [--skip-cargo] [--static-only]
#
#   static   shell syntax; the two Dockerfiles share one runtime layout block; the
#            compose file is valid; the systemd unit's hardening score; the Kubernetes
#            manifests render and validate offline (deploy/k8s/validate.sh)
#   images   the base image (debootstrap, cached: ~0 s when present, ~2.5 min when not)
#            and the runtime image aof-cluster:dev from target/<profile>/aofctl
#   smoke    deploy/tests/smoke.py: three containers form one cluster, webhook, worker, SIGTERM
#   compose  deploy/tests/container_tests.py: docker-compose.yml as users run it — nodes
#            configured by environment alone form one cluster in any start order; a
#            killed node stays a member and catches up; a rolling restart under signed
#            load loses no delivery; a scale-out node joins as voter and leaves on SIGTERM
#
# --profile: which host-built binary goes into the image (default debug: the one a plain
# `cargo build --workspace` made, so CI builds nothing twice; release for measurements).
# --skip-cargo: take target/<profile>/aofctl as it is (.ci/run: it has just built the
# workspace; `cargo build -p aofctl` could otherwise rebuild with other features).
# --static-only: skip everything that needs Docker.
# Needs Docker (fails when the daemon does not answer); installs debootstrap and
# docker-compose with apt-get when missing.
# Exit non-zero on the first failing step, with what to do in the message.
set -euo pipefail
AOF_LOG_TAG=deploy-ci
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"
cd "$AOF_ROOT"

PROFILE="${AOF_PROFILE:-debug}"
STATIC_ONLY=0
SKIP_CARGO=()
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) PROFILE="${2:?--profile needs debug or release}"; shift 2 ;;
    --static-only) STATIC_ONLY=1; shift ;;
    --skip-cargo) SKIP_CARGO=(--skip-cargo); shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (usage: deploy/ci.sh [--profile debug|release] [--skip-cargo] [--static-only])" ;;
  esac
done

passed=0
step() {
  local title="$1"; shift
  local t0=$SECONDS
  log "== $title"
  if ! "$@"; then
    log "FAILED: $title (after $(( SECONDS - t0 )) s)"
    echo "deploy: $passed passed, 1 failed"
    exit 1
  fi
  passed=$(( passed + 1 ))
  log "ok: $title ($(( SECONDS - t0 )) s)"
}

check_shell_syntax() {
  local f
  for f in deploy/*.sh deploy/k8s/*.sh deploy/image/aof-healthcheck; do
    bash -n "$f" || { log "$f: syntax error"; return 1; }
  done
  sh -n deploy/image/setup-runtime.sh
}

# The block between the "runtime layout" markers must be the same in both Dockerfiles,
# so the CI image and the users' image have one user, paths, entrypoint and healthcheck.
check_dockerfile_layout() {
  local a b
  a="$(sed -n '/--- runtime layout: begin/,/--- runtime layout: end/p' deploy/Dockerfile)"
  b="$(sed -n '/--- runtime layout: begin/,/--- runtime layout: end/p' deploy/Dockerfile.runtime)"
  [ -n "$a" ] || { log "deploy/Dockerfile: no runtime layout block"; return 1; }
  if [ "$a" != "$b" ]; then
    diff <(echo "$a") <(echo "$b") >&2 || true
    log "the runtime layout blocks of deploy/Dockerfile and deploy/Dockerfile.runtime differ (above): make them identical"
    return 1
  fi
}

# docker-compose from Debian when neither compose tool is there (the container tests
# need one; --static-only only skips the check without it).
ensure_compose() {
  if command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1; then
    return 0
  fi
  [ "$STATIC_ONLY" = 1 ] && return 1
  [ "$(id -u)" = 0 ] || die "no compose tool: install docker-compose (Debian: apt-get install docker-compose) or the compose plugin"
  log "installing docker-compose (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; } >/dev/null \
    || die "could not install docker-compose: apt-get install docker-compose"
}

check_compose() {
  if ! ensure_compose; then
    log "no compose tool: skipping the compose file check"
    return 0
  fi
  local compose
  compose="$(compose_cmd)"
  AOF_ADMIN_TOKEN=x AOF_READ_TOKEN=x AOF_WORKER_TOKEN=x GITHUB_WEBHOOK_SECRET=x \
    $compose -p aof-ci -f deploy/docker-compose.yml --profile scale --profile monitoring config -q
}

check_systemd_unit() {
  if ! command -v systemd-analyze >/dev/null 2>&1; then
    log "systemd-analyze not found: skipping the unit check"
    return 0
  fi
  # Exposure score 0 (locked down) .. 10 (unprotected); fail above 2.
  local out
  out="$(systemd-analyze security --offline=yes --threshold=20 deploy/systemd/aof-cluster.service 2>&1)" || {
    echo "$out" | tail -n 20 >&2
    log "deploy/systemd/aof-cluster.service: exposure above 2.0 (systemd-analyze security, above)"
    return 1
  }
  echo "$out" | tail -n 1 >&2
}

step "shell syntax of deploy/ scripts" check_shell_syntax
step "Dockerfile and Dockerfile.runtime share one runtime layout" check_dockerfile_layout
step "docker-compose.yml is valid" check_compose
step "systemd unit hardening" check_systemd_unit
step "Kubernetes manifests render and validate offline" deploy/k8s/validate.sh

if [ "$STATIC_ONLY" = 1 ]; then
  echo "deploy: $passed passed, 0 failed"
  exit 0
fi

require_docker
step "base image aof-base:bookworm (built once, then cached)" deploy/base-image.sh
step "runtime image aof-cluster:dev from target/$PROFILE/aofctl" \
  env AOF_IMAGE=aof-cluster:dev deploy/build-image.sh --profile "$PROFILE" "${SKIP_CARGO[@]}"
step "smoke test of the image (3-node cluster in containers)" python3 deploy/tests/smoke.py --image aof-cluster:dev
step "container tests of docker-compose.yml (env-only start, kill, rolling restart, scale out/in, recreate)" \
  python3 deploy/tests/container_tests.py --image aof-cluster:dev

echo "deploy: $passed passed, 0 failed"
