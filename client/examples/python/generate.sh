#!/usr/bin/env bash
# Generate the Python gRPC code of aof.v1 (queue_pb2.py, queue_pb2_grpc.py) from
# proto/proto/aof/v1/queue.proto into OUT_DIR (default ./gen), for
#   PYTHONPATH=OUT_DIR python3 worker.py ...
# worker.py does the same by itself, into a temp dir, when the modules are not
# importable; generated files are not committed (regenerate after proto changes).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/gen}"
mkdir -p "$out"
"${PYTHON:-python3}" -m grpc_tools.protoc -I "$here/../../../proto/proto" \
  --python_out="$out" --grpc_python_out="$out" aof/v1/queue.proto
echo "generated $out/aof/v1/queue_pb2.py and queue_pb2_grpc.py"
