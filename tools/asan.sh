#!/usr/bin/env bash
# Builds the spiky-runtime engine and its C++ tests with AddressSanitizer + UBSan
# (-fsanitize=address,undefined, any finding is fatal) and runs them: pool, padding kernels,
# bundles, the pipelined executor and the timeline, without Python in the way.
# Takes ~25 s from scratch on 2 cores (objects are cached in
# packages/spiky-runtime/build/cpp-tests/sanitize), a few seconds when cached.
# Extra argument: a test-name filter, e.g. `tools/asan.sh pool_`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python="${SPIKY_VENV:-$root/.venv}/bin/python"
[ -x "$python" ] || python=python3
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
echo "[asan] building runtime + C++ tests with -fsanitize=address,undefined" >&2
"$python" "$root/packages/spiky-runtime/tests/cpp/build_tests.py" --sanitize --run "$@"
