#!/usr/bin/env bash
# Install the Python example worker's dependencies (client/examples/python/requirements.txt)
# so that cli/tests/python_worker.rs can run it. Idempotent and quiet: when the pinned
# versions are already installed it returns without touching the network.
#
# PYTHON selects the interpreter (default python3): the same one the test runs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
REQ=client/examples/python/requirements.txt

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "python-deps: $PY not found; install Python 3 (3.9+) to run the Python worker test" >&2
  exit 1
fi

# Fast path: every pinned distribution is installed at its pinned version.
if "$PY" - "$REQ" <<'PYEOF'
import sys
from importlib import metadata
ok = True
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    try:
        ok &= metadata.version(name.strip()) == want.strip()
    except metadata.PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
PYEOF
then
  exit 0
fi

pip_install() { "$PY" -m pip install --quiet --disable-pip-version-check --no-input "$@" -r "$REQ"; }

echo "python-deps: installing $REQ with $("$PY" --version 2>&1)" >&2
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  "$PY" -m ensurepip --upgrade >/dev/null 2>&1 || {
    echo "python-deps: $PY has no pip and ensurepip failed; install pip (e.g. apt-get install python3-pip)" >&2
    exit 1
  }
fi
err="$(mktemp)"
trap 'rm -f "$err"' EXIT
if [ -n "${VIRTUAL_ENV:-}" ]; then
  pip_install
elif ! pip_install 2>"$err"; then
  # Not writable (non-root system Python): fall back to the user site.
  echo "python-deps: system-wide install failed ($(tail -n1 "$err")); retrying with --user" >&2
  pip_install --user
fi
"$PY" -c "import grpc, grpc_tools.protoc, google.protobuf" || {
  echo "python-deps: installed, but '$PY -c \"import grpc, grpc_tools\"' still fails" >&2
  exit 1
}
