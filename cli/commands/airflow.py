"""`sassflow airflow up|down|status`."""
from __future__ import annotations

import json
import sys

from sassflow.settings import Settings


def register(commands, benches) -> None:
    p = commands.add_parser("airflow", help="run Airflow 3 locally with the project's DAGs")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--postgres", action="store_true",
                   help="metadata DB in a local PostgreSQL (default: settings.airflow.sql_alchemy_conn or SQLite)")
    p.add_argument("--port", type=int, help="api-server/UI port (default: settings.airflow.port)")
    p.set_defaults(func=cmd_airflow)


def cmd_airflow(args, settings: Settings) -> int:
    from cli.local.airflow import ADMIN_USER, DAGS_FOLDER, LocalAirflow

    if args.port:
        settings.airflow.port = args.port
    local = LocalAirflow(settings, postgres=True if args.postgres else None)
    try:
        if args.action == "up":
            status = local.up()
            print(f"Airflow UI: {status['ui']}  (user '{ADMIN_USER}', password in {local.passwords_file}); "
                  f"DAGs from {DAGS_FOLDER}, paused at creation: unpause them in the UI; "
                  f"the bare CLI: `source {status['env_file']}` then `airflow ...`", file=sys.stderr)
        elif args.action == "down":
            status = local.down()
            print("airflow stopped", file=sys.stderr)
        else:
            status = local.status()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status))
    return 0 if status["healthy"] or args.action == "down" else 3
