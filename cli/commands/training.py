"""`sassflow train`, `sassflow registry ...`, `sassflow bench train|quality`."""
from __future__ import annotations

import json
import sys


def _print(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


def cmd_train(args, settings) -> int:
    from training.pipeline import load_events, train_pipeline

    from training.content import catalog_items

    if args.history:
        from training.data import load_history_events

        events = load_history_events(settings.streaming.offline_dir, args.start_ms, args.end_ms,
                                     settings.scenarios)
        data = None  # the catalogue comes from the offline catalogue history
    else:
        data = args.data or settings.data.find_movielens()
        if data is None:
            print("no dataset: pass --data DIR or --history", file=sys.stderr)
            return 2
        events = load_events(settings, data)
    if events.empty:
        print("no events to train on", file=sys.stderr)
        return 2
    catalog = catalog_items(settings, data) if settings.content.enabled else None
    res = train_pipeline(settings, events, baselines=tuple(b for b in args.baselines.split(",") if b),
                         catalog=catalog)
    from cli.output import emit_json

    emit_json({k: res[k] for k in ("run_id", "artifact_dir", "registry", "report", "total_s", "content") if k in res}
              | {"val_recall@50": res["metrics"]["val"]["recall@50"]["mean"],
                 "test_recall@50": res["metrics"]["test"]["recall@50"]["mean"]})
    return 0


def cmd_registry(args, settings) -> int:
    from training.registry import ModelRegistry

    reg = ModelRegistry.from_settings(settings)
    if args.action == "list":
        for v in reg.list():
            val = (v.metrics or {}).get("val", {}).get("recall@50", {}).get("mean")
            print(f"{v.id:>4} {v.name:<10} {v.status:<10} {v.created_at:%Y-%m-%d %H:%M} "
                  f"val_recall@50={val if val is None else round(val, 4)} published={v.published} "
                  f"{v.artifact_path}")
    elif args.action == "show":
        v = reg.get(args.version) if args.version else reg.promoted("sass")  # the recall model (rankers: "ranker")
        if v is None:
            print("nothing promoted", file=sys.stderr)
            return 1
        _print(v.to_dict() | {"artifact_ok": reg.verify_artifact(v.id)})
    elif args.action == "promote":
        if not args.version:
            print("promote needs a version", file=sys.stderr)
            return 2
        if not reg.verify_artifact(args.version):
            print(f"version {args.version}: artifact checksum mismatch, refusing", file=sys.stderr)
            return 1
        _print(reg.set_status(args.version, "promoted", args.reason or "manual promotion").to_dict())
    elif args.action == "rollback":
        _print(reg.rollback(reason=args.reason or "manual rollback").to_dict())
    return 0


def cmd_bench_train(args, settings) -> int:
    from cli.output import emit_json
    from cli.bench.training import bench_train

    emit_json(bench_train(settings, args.data or settings.data.find_movielens(), args.epochs,
                          repeats=args.repeats))
    return 0


def cmd_bench_quality(args, settings) -> int:
    from cli.output import emit_json
    from cli.bench.training import bench_quality

    models = args.models.split(",") if args.models else None
    # flat popularity and taste-driven clicks: what an item is, not how popular it is, decides them
    synthetic = ({"n_users": args.users, "n_items": args.items, "n_events": args.events, "seed": 0,
                  "zipf_a": 0.3, "click_scale": 5.0, "click_bias": -4.0} if args.source == "synthetic" else None)
    data = None if synthetic else args.data or settings.data.find_movielens()
    emit_json(bench_quality(settings, data, args.scenarios, args.seeds, models, args.epochs,
                            cold_start=not args.no_cold_start, synthetic=synthetic,
                            ranking=not args.no_ranking))
    return 0


def cmd_bench_retrain(args, settings) -> int:
    from cli.bench.retrain import bench_retrain
    from cli.output import emit_json

    emit_json(bench_retrain(settings, args.data or settings.data.find_movielens(), args.limit, args.state_dir))
    return 0


def register(commands, benches) -> None:
    p = commands.add_parser("train", help="train SASS (both stages), evaluate, register, gate, report")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="a dataset folder (MovieLens format); default: settings.data")
    src.add_argument("--history", action="store_true", help="train on the offline history")
    p.add_argument("--start-ms", type=int, default=None)
    p.add_argument("--end-ms", type=int, default=None)
    p.add_argument("--baselines", default="pop", help="comma-separated baselines to report against")
    p.set_defaults(func=cmd_train)

    p = commands.add_parser("registry", help="the model registry")
    p.add_argument("action", choices=["list", "show", "promote", "rollback"])
    p.add_argument("version", nargs="?", type=int)
    p.add_argument("--reason", default=None)
    p.set_defaults(func=cmd_registry)

    p = benches.add_parser("train", help="SASS two-stage wall time vs a plain two-tower")
    p.add_argument("--data", default=None)
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: settings)")
    p.add_argument("--repeats", type=int, default=2, help="alternating two-tower/SASS rounds (ratio of the sums)")
    p.set_defaults(func=cmd_bench_train)

    p = benches.add_parser("quality", help="recall/NDCG of sass and the baselines")
    p.add_argument("--data", default=None)
    p.add_argument("--scenarios", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", default=None, help="comma-separated subset of the models")
    p.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: settings)")
    p.add_argument("--no-cold-start", action="store_true", help="skip the held-out-items protocol (cold_start)")
    p.add_argument("--source", choices=["movielens", "synthetic"], default="movielens",
                   help="synthetic: the synthetic source, whose items carry posters (content_no_image)")
    p.add_argument("--users", type=int, default=2000, help="synthetic: users")
    p.add_argument("--items", type=int, default=5000, help="synthetic: items")
    p.add_argument("--events", type=int, default=400_000, help="synthetic: events")
    p.add_argument("--no-ranking", action="store_true", help="skip the rankers (the ranking figures)")
    p.set_defaults(func=cmd_bench_quality)

    p = benches.add_parser("retrain", help="the retrain DAG's wall time with and without the rankers")
    p.add_argument("--data", default=None, help="a dataset folder (MovieLens format); default: settings.data")
    p.add_argument("--limit", type=int, default=None, help="only the first N events (time order)")
    p.add_argument("--state-dir", default=None, help="keep the runs' state here (default: a scratch folder)")
    p.set_defaults(func=cmd_bench_retrain)
