#!/usr/bin/env bash
# Writes the Python stubs for protos/ into OUT/actionstream/v1.
# Usage: scripts/gen_protos.sh PYTHON OUT
set -euo pipefail
python=${1:-python3}
out=${2:-.}
here=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out/actionstream/v1"
# mypy-protobuf types the service stubs (grpc_tools types the messages only), for the
# synchronous and the asyncio channel; its plugin lies beside PYTHON's executable.
bin=$("$python" -c 'import os, sys; print(os.path.dirname(sys.executable))')
"$python" -m grpc_tools.protoc -I"$here/protos" \
  --python_out="$out" --grpc_python_out="$out" --pyi_out="$out" \
  --plugin=protoc-gen-mypy_grpc="$bin/protoc-gen-mypy_grpc" \
  --mypy_grpc_out=quiet:"$out" \
  "$here/protos/actionstream/v1/actionstream.proto"
# protoc does not write package markers; an empty one makes the folder importable.
: > "$out/actionstream/v1/__init__.py"
