#!/usr/bin/env bash
# Regenerate constraints.txt: resolve pyproject.toml's dependencies (+ the test extra) afresh from the
# package index in a throwaway virtualenv and pin every package it installed, as Airflow's own
# constraints files do.  scripts/setup.sh installs with `-c constraints.txt`, so every machine gets
# these exact versions.  Run it (then commit constraints.txt) when pyproject.toml's dependencies
# change or to take upgrades: `bash scripts/lock.sh`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" - "$TMP/reqs.txt" <<'PYEOF'
import sys, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = p["dependencies"] + p["optional-dependencies"]["test"] + ["setuptools>=68", "wheel"]
open(sys.argv[1], "w").write("\n".join(deps) + "\n")
PYEOF
"$TMP/venv/bin/pip" install -q -r "$TMP/reqs.txt"
{
  echo "# Every package sassflow installs, pinned: scripts/setup.sh installs with -c constraints.txt."
  echo "# Resolved for CPython $("$TMP/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])') on $(uname -sm)."
  echo "# Regenerate (after changing pyproject.toml's dependencies): bash scripts/lock.sh"
  "$TMP/venv/bin/pip" freeze --all --exclude-editable | grep -v '^pip=='
} > constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pinned packages" >&2
