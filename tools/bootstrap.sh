#!/usr/bin/env bash
# Create (or reuse) the dev venv and install the four packages plus pinned dev tools.
# Idempotent: a second run with unchanged sources does nothing but check a stamp.
#   SPIKY_VENV   venv location (default: <repo>/.venv)
#   PYTHON       interpreter used to create it (default: python3)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${SPIKY_VENV:-$root/.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating venv at $venv" >&2
  "$python" -m venv "$venv"
fi

# Everything that changes what gets installed or built goes into the stamp.
stamp_file="$venv/.spiky-stamp"
stamp=$(cd "$root" && cat tools/requirements-dev.txt tools/requirements-zoo.txt packages/*/pyproject.toml \
  packages/spiky-runtime/hatch_build.py packages/spiky-runtime/csrc/* \
  packages/spiky-runtime/src/spiky_runtime/include/spiky_runtime/* 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] \
   && [ -n "$(ls "$root"/packages/spiky-runtime/src/spiky_runtime/_core*.so 2>/dev/null)" ]; then
  echo "[bootstrap] $venv is up to date" >&2
  exit 0
fi

pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
echo "[bootstrap] installing pinned dev tools (torch 2.13.0 CPU, pytest, mypy, ruff, ...)" >&2
"${pip[@]}" install -r "$root/tools/requirements-dev.txt"
echo "[bootstrap] installing the model zoo's vision libraries into $venv/spiky-zoo (tools/requirements-zoo.txt)" >&2
rm -rf "$venv/spiky-zoo"
"${pip[@]}" install --no-deps --target "$venv/spiky-zoo" -r "$root/tools/requirements-zoo.txt"
echo "[bootstrap] building and installing spiky-ir, spiky-runtime (C++), spiky-dist, spiky-torch" >&2
# -Werror: the C++ must build without warnings; no build isolation: use the pinned tools.
SPIKY_WERROR=1 "${pip[@]}" install --no-build-isolation -c "$root/tools/requirements-dev.txt" \
  -e "$root/packages/spiky-ir[torch]" \
  -e "$root/packages/spiky-runtime" \
  -e "$root/packages/spiky-dist" \
  -e "$root/packages/spiky-torch"
echo "[bootstrap] building the nkipy torch device extension (cached after the first build)" >&2
"$venv/bin/python" -c "import spiky.torch"
echo "$stamp" > "$stamp_file"
echo "[bootstrap] done" >&2
