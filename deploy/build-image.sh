#!/usr/bin/env bash
# Builds the aof-cluster runtime image from a binary built on this host:
#   1. cargo build --release --locked -p aofctl  (a no-op when up to date; --profile
#      debug takes the binary of a plain `cargo build` instead, e.g. the one CI built)
#   2. deploy/base-image.sh                      (cached base image, no pull)
#   3. docker build -f deploy/Dockerfile.runtime (context: only the files it copies)
#
#   deploy/build-image.sh [--tag TAG] [--profile release|debug] [--skip-cargo]
#
# Environment: AOF_IMAGE (default aof-cluster:dev), AOF_BASE_IMAGE (default
# aof-base:bookworm), CARGO_TARGET_DIR (default ./target), and those of base-image.sh.
set -euo pipefail
AOF_LOG_TAG=build-image
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"

TAG="${AOF_IMAGE:-aof-cluster:dev}"
BASE="${AOF_BASE_IMAGE:-aof-base:bookworm}"
SKIP_CARGO=0
PROFILE="${AOF_PROFILE:-release}"
while [ $# -gt 0 ]; do
  case "$1" in
    --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
    --skip-cargo) SKIP_CARGO=1; shift ;;
    --profile) PROFILE="${2:?--profile needs release or debug}"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (usage: deploy/build-image.sh [--tag TAG] [--profile release|debug] [--skip-cargo])" ;;
  esac
done

require_docker
cd "$AOF_ROOT"
TARGET_DIR="${CARGO_TARGET_DIR:-$AOF_ROOT/target}"
case "$PROFILE" in
  release) CARGO_PROFILE_ARGS=(--release) ;;
  debug) CARGO_PROFILE_ARGS=() ;;
  *) die "--profile must be release or debug, not '$PROFILE'" ;;
esac
BIN="$TARGET_DIR/$PROFILE/aofctl"

t0=$SECONDS
if [ "$SKIP_CARGO" = 0 ]; then
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain, or build aofctl elsewhere and pass --skip-cargo"
  log "cargo build ${CARGO_PROFILE_ARGS[*]:+${CARGO_PROFILE_ARGS[*]} }--locked -p aofctl"
  cargo build "${CARGO_PROFILE_ARGS[@]}" --locked -p aofctl || die "cargo build of aofctl failed (output above)"
fi
[ -x "$BIN" ] || die "$BIN not found: run 'cargo build ${CARGO_PROFILE_ARGS[*]} --locked -p aofctl' (or drop --skip-cargo)"
t_cargo=$(( SECONDS - t0 ))

t1=$SECONDS
AOF_BASE_IMAGE="$BASE" "$AOF_ROOT/deploy/base-image.sh"
t_base=$(( SECONDS - t1 ))

# A context of just the files Dockerfile.runtime copies (the repo's target/ is GBs).
t2=$SECONDS
CTX="$(mktemp -d "${TMPDIR:-/tmp}/aof-image-ctx.XXXXXX")"
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/target/$PROFILE" "$CTX/deploy"
cp "$BIN" "$CTX/target/$PROFILE/aofctl"
cp -r deploy/image deploy/Dockerfile.runtime "$CTX/deploy/"
sha="$(sha256sum "$BIN" | cut -d' ' -f1)"
log "docker build $TAG (FROM $BASE, $PROFILE aofctl sha256 ${sha:0:12})"
if ! docker_build -q -f "$CTX/deploy/Dockerfile.runtime" --build-arg "BASE=$BASE" \
    --build-arg "BINARY=target/$PROFILE/aofctl" --label "org.aof.aofctl.profile=$PROFILE" \
    --label "org.aof.aofctl.sha256=$sha" \
    --label "org.opencontainers.image.revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    -t "$TAG" "$CTX" >"$CTX/build.log" 2>&1; then
  cat "$CTX/build.log" >&2
  die "docker build of $TAG failed (output above)"
fi
t_image=$(( SECONDS - t2 ))

version="$(docker run --rm "$TAG" --version 2>&1)" || die "the new image does not run: $version"
# Earlier builds of this image left untagged behind: remove those (ours only, by label).
docker image prune -f --filter "label=org.opencontainers.image.title=aof-cluster" >/dev/null 2>&1 || true
log "built $TAG: $version; times: cargo ${t_cargo}s, base image ${t_base}s, image ${t_image}s"
