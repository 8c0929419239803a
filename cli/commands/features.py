"""`sassflow features apply`: register the feature repo in the configured stores."""
from __future__ import annotations

import sys


def cmd_apply(args, settings) -> int:
    from features.store import apply_definitions, write_repo_yaml

    if args.online_store:
        settings.feast.online_store = args.online_store
    store = apply_definitions(settings)
    names = sorted(fv.name for fv in store.list_feature_views())
    print(f"applied {names} to project {settings.feast.project!r} "
          f"({settings.feast.online_store} online store); repo: {write_repo_yaml(settings)}", file=sys.stderr)
    return 0


def register(commands, benches) -> None:
    p = commands.add_parser("features", help="the Feast feature repo")
    sub = p.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    a = sub.add_parser("apply", help="register entities and feature views, create online tables")
    a.add_argument("--online-store", choices=["sqlite", "redis"], default=None)
    a.set_defaults(func=cmd_apply)
