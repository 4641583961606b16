#!/usr/bin/env bash
# README command 2: set up (idempotent), then ruff, mypy --strict on every package, every
# test (C++ built with -Wall -Wextra -Werror by the bootstrap), and the runtime's C++ tests
# under ASan/UBSan. Extra arguments go to pytest only, e.g. `tools/test.sh -m smoke` for the
# fast subset (which skips the sanitizer build).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/bootstrap.sh"
bin="${SPIKY_VENV:-$root/.venv}/bin"
cd "$root"
echo "[test] ruff" >&2
"$bin/ruff" check .
echo "[test] mypy --strict" >&2
"$bin/mypy" packages/spiky-ir/src packages/spiky-runtime/src packages/spiky-dist/src packages/spiky-torch/src
durations=()
if [ $# -eq 0 ]; then  # the full run (not a `-m smoke` selection) also runs the sanitizers
  echo "[test] AddressSanitizer + UBSan build of the runtime's C++ tests" >&2
  bash "$root/tools/asan.sh"
  durations=(--durations=25)  # the slowest tests in the log: the suite's time budget is ~20 minutes
fi
echo "[test] pytest" >&2
export SPIKY_STRICT_SKIPS=1  # everything is installed here: a skip would hide a broken environment
exec "$bin/python" -m pytest "${durations[@]}" "$@"
