#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: system packages, the virtualenv at .venv/ with every
# Python dependency, and the Kafka broker jars from Maven Central.  Safe to run again: each step is
# skipped when already done.  Python wheels are kept in a wheelhouse (~/.cache/sassflow/wheels) so
# torch and the rest are downloaded once per machine, not once per checkout.  Every version is pinned
# by constraints.txt (Airflow's convention; `bash scripts/lock.sh` regenerates it), so every machine
# installs the same set.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${SASSFLOW_CACHE:-$HOME/.cache/sassflow}"
WHEELS="$CACHE/wheels"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
log() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# --- system packages: Java 17 + Maven (Kafka broker), Redis and PostgreSQL (production-config tests),
#     headless Chromium (the test that renders /docs offline, cli/local/browser.py)
need=()
command -v java >/dev/null 2>&1 || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || need+=(maven)
[ -x /usr/bin/redis-server ] || need+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  log "installing Debian packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # Debian starts the packaged services; sassflow runs its own instances on other ports.
  for svc in redis-server postgresql; do $SUDO service "$svc" stop >/dev/null 2>&1 || true; done
fi

# --- Python: .venv with the project (editable) and its dependencies
"$PY" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "Python >= 3.11 is required" >&2; exit 1; }
[ -x .venv/bin/python ] || { log "creating .venv"; "$PY" -m venv .venv; }
STAMP=".venv/.sassflow-deps"
HASH="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$HASH" ]; then
  mkdir -p "$WHEELS"
  REQS="$(mktemp)"
  .venv/bin/python - "$REQS" <<'PYEOF'
import sys, tomllib
p = tomllib.load(open("pyproject.toml", "rb"))["project"]
# pybind11: hnswlib builds from its sdist, offline from the wheel folder
deps = p["dependencies"] + p["optional-dependencies"]["test"] + ["setuptools>=68", "wheel", "pybind11>=2.10"]
open(sys.argv[1], "w").write("\n".join(deps) + "\n")
PYEOF
  # every version is pinned: with a warm wheelhouse the install needs no index at all
  log "installing into .venv from $WHEELS (versions pinned by constraints.txt)"
  if ! .venv/bin/pip install -q --no-index --find-links "$WHEELS" -r "$REQS" -c constraints.txt 2>/dev/null; then
    log "fetching the missing wheels into $WHEELS (already-present files are not downloaded again)"
    .venv/bin/pip download -q -d "$WHEELS" -r "$REQS" -c constraints.txt
    .venv/bin/pip install -q --no-index --find-links "$WHEELS" -r "$REQS" -c constraints.txt
  fi
  .venv/bin/pip install -q --no-index --find-links "$WHEELS" --no-build-isolation --no-deps -e .
  rm -f "$REQS"
  echo "$HASH" > "$STAMP"
else
  .venv/bin/python -c 'import sassflow' 2>/dev/null \
    || .venv/bin/pip install -q --no-index --no-build-isolation --no-deps -e .
fi

# --- the Kafka broker jars (resolved once by Maven into ~/.cache/sassflow/kafka)
.venv/bin/python -c 'from sassflow.settings import Settings; from cli.local.kafka import ensure_jars; print(ensure_jars(Settings().local_kafka))' >/dev/null
log "ready: .venv/bin/sassflow"
