#!/usr/bin/env bash
# Writes the Python stubs for protos/ into OUT/actionstream/v1.
# Usage: scripts/gen_protos.sh PYTHON OUT
set -euo pipefail
python=${1:-python3}
out=${2:-.}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/actionstream/v1"
"$python" -m grpc_tools.protoc -I"$here/protos" \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  "$here/protos/actionstream/v1/actionstream.proto"
# protoc does not write package markers; an empty one makes the folder importable.
: > "$out/actionstream/v1/__init__.py"
