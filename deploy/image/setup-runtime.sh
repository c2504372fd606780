#!/bin/sh
# Runs inside both image builds (deploy/Dockerfile and deploy/Dockerfile.runtime) so the
# two images have the same user, directories and tools. Expects ca-certificates and
# tini to be installed already.
set -eu
fail() { echo "setup-runtime: $*" >&2; exit 1; }
[ -x /usr/bin/tini ] || fail "/usr/bin/tini missing: install the tini package in the base image"
[ -s /etc/ssl/certs/ca-certificates.crt ] || fail "CA bundle missing: install ca-certificates in the base image"
[ -x /usr/local/bin/aofctl ] || fail "/usr/local/bin/aofctl missing: copy the binary before running this"
/usr/local/bin/aofctl --version >/dev/null || fail "aofctl does not run on this base (glibc too old?)"

# Non-root user with fixed ids (Kubernetes runAsUser/fsGroup and host volumes use them).
groupadd --system --gid 10001 aof
useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/aof --no-create-home \
  --shell /usr/sbin/nologin aof
# /var/lib/aof: the data volume (node data under data/); /etc/aof: config, certs, triggers.
install -d -o 10001 -g 10001 -m 0750 /var/lib/aof /var/lib/aof/data
install -d -o 0 -g 10001 -m 0750 /etc/aof /etc/aof/certs /etc/aof/triggers
