#!/usr/bin/env bash
# Set up (idempotent) and run the main job end to end on embedded defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh
exec .venv/bin/sassflow demo "$@"
