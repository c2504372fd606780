# Shared helpers of the deploy/ scripts (sourced, not run).
# shellcheck shell=bash

# Repository root (this file lives in deploy/).
AOF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export AOF_ROOT

log() { printf '[%s] %s\n' "${AOF_LOG_TAG:-deploy}" "$*" >&2; }
die() { printf '[%s] error: %s\n' "${AOF_LOG_TAG:-deploy}" "$*" >&2; exit 1; }

# Fails with a clear message unless the Docker daemon answers.
require_docker() {
  command -v docker >/dev/null 2>&1 || die "docker not found: install Docker Engine (Debian: apt-get install docker.io)"
  docker info >/dev/null 2>&1 || die "the Docker daemon does not answer ('docker info' failed): start it (systemctl start docker) or check DOCKER_HOST"
}

# True when the image tag exists locally.
image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

# A label of a local image (empty when unset).
image_label() { docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true; }

# The compose command of this machine: `docker compose` (v2 plugin) or `docker-compose` (v1).
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then
    echo "docker compose"
  elif command -v docker-compose >/dev/null 2>&1; then
    echo "docker-compose"
  else
    die "neither 'docker compose' nor 'docker-compose' found: install docker-compose (Debian: apt-get install docker-compose)"
  fi
}

# `docker build` without BuildKit: this project's Dockerfiles need no BuildKit features,
# and the classic builder works where the buildx plugin is not installed.
docker_build() { DOCKER_BUILDKIT=0 docker build "$@"; }
