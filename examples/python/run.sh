#!/usr/bin/env bash
# Runs the Python example against a minicrm server:
#   examples/python/run.sh [ADDR]        (default 127.0.0.1:50051)
# Creates a virtual environment (examples/python/.venv, or $MINICRM_EXAMPLE_VENV),
# installs requirements.txt into it, generates the stubs from proto/ into
# examples/python/generated/ (not committed), then runs quickstart.py.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
addr="${1:-127.0.0.1:50051}"
venv="${MINICRM_EXAMPLE_VENV:-$here/.venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

generated="$here/generated"
rm -rf "$generated"
mkdir -p "$generated"
# grpc_tools ships the well-known types (google/protobuf/*.proto) itself.
(cd "$root/proto" && "$venv/bin/python" -m grpc_tools.protoc \
  -I . \
  --python_out="$generated" \
  --grpc_python_out="$generated" \
  minicrm/v1/*.proto)

PYTHONPATH="$generated" "$venv/bin/python" "$here/quickstart.py" --addr "$addr"
