#!/usr/bin/env bash
# Builds the runtime base image of aof-cluster from Debian's packages, without pulling
# any image: `debootstrap --variant=minbase bookworm` into a temporary directory, then
# `tar | docker import`. deploy/Dockerfile.runtime names it as its BASE.
#
#   deploy/base-image.sh [--rebuild]
#
# Cached: when the tag exists and was built from the same recipe (suite, package list,
# this script's recipe version) less than AOF_BASE_MAX_AGE_DAYS ago, nothing is done.
#
# Environment:
#   AOF_BASE_IMAGE            tag to build (default aof-base:bookworm)
#   DEBIAN_MIRROR             Debian mirror (default http://deb.debian.org/debian)
#   DEBIAN_SECURITY_MIRROR    security mirror (default http://deb.debian.org/debian-security)
#   AOF_BASE_SECURITY_UPDATES 1 (default) applies bookworm-security/-updates; 0 skips
#   AOF_BASE_MAX_AGE_DAYS     rebuild an older cached image (default 30; 0 = never)
#
# Needs root (debootstrap) and the debootstrap package (installed with apt-get if missing).
set -euo pipefail
AOF_LOG_TAG=base-image
# shellcheck source=deploy/lib.sh
source "$(dirname "$0")/lib.sh"

TAG="${AOF_BASE_IMAGE:-aof-base:bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SECURITY_UPDATES="${AOF_BASE_SECURITY_UPDATES:-1}"
MAX_AGE_DAYS="${AOF_BASE_MAX_AGE_DAYS:-30}"
# What the runtime needs on top of minbase: CA roots (GitHub API, OTLP over TLS) and an
# init that forwards signals and reaps the orphans of worker commands.
PACKAGES="ca-certificates,tini"
# Bump when the steps below change what ends up in the image.
RECIPE_VERSION=1
RECIPE="v${RECIPE_VERSION} ${SUITE} ${PACKAGES} security=${SECURITY_UPDATES}"

REBUILD=0
case "${1:-}" in
  --rebuild) REBUILD=1 ;;
  "") ;;
  -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
  *) die "unknown argument '$1' (usage: deploy/base-image.sh [--rebuild])" ;;
esac

require_docker

# One builder at a time on this machine (parallel CI runs share the engine).
LOCK="${TMPDIR:-/tmp}/aof-base-image.lock"
exec 9>"$LOCK"
flock -w 900 9 || die "another base image build holds $LOCK for 15 min; remove it if no build runs"

if [ "$REBUILD" = 0 ] && image_exists "$TAG"; then
  have="$(image_label "$TAG" org.aof.base.recipe)"
  built="$(image_label "$TAG" org.aof.base.built-unix)"
  age_days=$(( ( $(date +%s) - ${built:-0} ) / 86400 ))
  if [ "$have" = "$RECIPE" ] && { [ "$MAX_AGE_DAYS" = 0 ] || [ "$age_days" -lt "$MAX_AGE_DAYS" ]; }; then
    log "$TAG is cached (recipe '$RECIPE', ${age_days} d old): nothing to do"
    exit 0
  fi
  log "$TAG exists but is stale (recipe '${have:-?}', ${age_days} d old): rebuilding"
fi

[ "$(id -u)" = 0 ] || die "debootstrap needs root: run as root (or sudo $0)"
if ! command -v debootstrap >/dev/null 2>&1; then
  log "installing debootstrap (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap; } >/dev/null \
    || die "could not install debootstrap: apt-get install debootstrap"
fi

start=$SECONDS
WORK="$(mktemp -d /var/tmp/aof-base.XXXXXX)"
ROOTFS="$WORK/rootfs"
cleanup() {
  # Unmount anything left mounted under the rootfs by a failed run before deleting it.
  if command -v findmnt >/dev/null 2>&1; then
    findmnt -rn -o TARGET | grep -F "$ROOTFS" | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  fi
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

log "debootstrap --variant=minbase $SUITE from $MIRROR (+ ${PACKAGES})"
if ! debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
  tail -n 30 "$WORK/debootstrap.log" >&2
  [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
  die "debootstrap failed (log above); check that $MIRROR is reachable or set DEBIAN_MIRROR"
fi

cat >"$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF

# No service may start inside the chroot while packages are upgraded.
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 755 "$ROOTFS/usr/sbin/policy-rc.d"
if [ "$SECURITY_UPDATES" = 1 ]; then
  log "applying $SUITE-updates and $SUITE-security"
  if ! chroot "$ROOTFS" /bin/sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get -y -qq -o Dpkg::Use-Pty=0 upgrade' \
      >"$WORK/upgrade.log" 2>&1; then
    tail -n 30 "$WORK/upgrade.log" >&2
    die "apt-get upgrade in the new rootfs failed (log above); AOF_BASE_SECURITY_UPDATES=0 skips it"
  fi
fi
rm -f "$ROOTFS/usr/sbin/policy-rc.d"

# Slim it: package lists, downloaded .debs, docs (copyright files stay), man pages,
# translations; /dev is provided by the container runtime.
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/log/* \
  "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* "$ROOTFS"/usr/share/locale/* \
  "$ROOTFS"/usr/share/doc-base "$ROOTFS"/debootstrap "$ROOTFS"/dev/* "$ROOTFS"/tmp/* "$ROOTFS"/var/tmp/*
find "$ROOTFS/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$ROOTFS/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
# Keep them off in derived images too (apt-get install in a Dockerfile FROM this).
cat >"$ROOTFS/etc/dpkg/dpkg.cfg.d/aof-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
echo 'APT::Install-Recommends "false";' >"$ROOTFS/etc/apt/apt.conf.d/90aof-no-recommends"

[ -x "$ROOTFS/usr/bin/tini" ] || die "tini is missing from the rootfs: is it in $SUITE main on $MIRROR?"
[ -s "$ROOTFS/etc/ssl/certs/ca-certificates.crt" ] || die "CA bundle missing from the rootfs (ca-certificates not configured)"

log "importing the rootfs as $TAG ($(du -sh --one-file-system "$ROOTFS" | cut -f1))"
tar -C "$ROOTFS" --numeric-owner -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL org.aof.base.recipe=\"$RECIPE\"" \
  --change "LABEL org.aof.base.built-unix=\"$(date +%s)\"" \
  --change "LABEL org.opencontainers.image.description=\"Debian $SUITE minbase + $PACKAGES (aof-cluster runtime base)\"" \
  - "$TAG" >/dev/null

log "built $TAG in $(( SECONDS - start )) s ($(docker image inspect --format '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
