"""`sassflow features apply`: register the feature repo in the configured stores.
`sassflow features check`: sampled online rows against their recomputation from the offline history."""
from __future__ import annotations

import json
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


def cmd_check(args, settings) -> int:
    from streaming.check import check_features

    if args.online_store:
        settings.feast.online_store = args.online_store
    report = check_features(settings, sample=args.sample, seed=args.seed)
    print(f"{report['mismatched_keys']} of {report['sampled_keys']} sampled keys differ from the recomputation "
          f"({report['missing_keys']} missing)", file=sys.stderr)
    print(json.dumps(report, default=str))
    return 0 if report["mismatched_keys"] == 0 else 1


def register(commands, benches) -> None:
    p = commands.add_parser("features", help="the Feast feature repo")
    sub = p.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    a = sub.add_parser("apply", help="register entities and feature views, create online tables")
    a.add_argument("--online-store", choices=["sqlite", "redis"], default=None)
    a.set_defaults(func=cmd_apply)
    c = sub.add_parser("check", help="recompute sampled keys from the offline history, compare with the "
                                     "online store; JSON report, exit 1 on a mismatch")
    c.add_argument("--sample", type=int, default=1000, help="users and items to sample (each)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--online-store", choices=["sqlite", "redis"], default=None)
    c.set_defaults(func=cmd_check)
