#!/usr/bin/env bash
# README command 1: set up (idempotent) and run the quickstart on the host target.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/tools/bootstrap.sh"
exec "${SPIKY_VENV:-$root/.venv}/bin/python" "$root/examples/quickstart.py" "$@"
