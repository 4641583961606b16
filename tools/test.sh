#!/usr/bin/env bash
# README command 2: set up (idempotent), then ruff, mypy --strict on every package, and
# every test (C++ built with -Wall -Wextra -Werror by the bootstrap). Extra arguments go
# to pytest, e.g. `tools/test.sh -m smoke` for the fast subset.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/bootstrap.sh"
bin="${SPIKY_VENV:-$root/.venv}/bin"
cd "$root"
echo "[test] ruff" >&2
"$bin/ruff" check .
echo "[test] mypy --strict" >&2
"$bin/mypy" packages/spiky-ir/src packages/spiky-runtime/src packages/spiky-dist/src packages/spiky-torch/src
echo "[test] pytest" >&2
exec "$bin/python" -m pytest "$@"
