"""`sassflow serve`, `sassflow bundle ...` and the serving benchmarks."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def register(commands, benches) -> None:
    p = commands.add_parser("serve", help="run the recommendation HTTP service")
    p.add_argument("--host", help="default: settings.serving.host (127.0.0.1)")
    p.add_argument("--port", type=int, help="default: settings.serving.port")
    p.add_argument("--workers", type=int, help="processes on the port (default: settings.serving.workers)")
    p.add_argument("--static-features", type=Path,
                   help="serve features from this npz table instead of Feast (synthetic benchmarks only)")
    p.set_defaults(func=cmd_serve)

    bundle = commands.add_parser("bundle", help="build, publish, roll back and list serving bundles")
    sub = bundle.add_subparsers(dest="bundle_command", required=True, metavar="ACTION")
    b = sub.add_parser("build", help="build a bundle from a model version (or a synthetic catalog)")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--model-version", type=int, help="registered model version to bundle")
    src.add_argument("--synthetic", type=int, metavar="N_ITEMS", help="synthetic catalog + mean-history tower")
    b.add_argument("--artifact-dir", type=Path,
                   help="model artifact folder (default: the registry's stored copy of the version)")
    b.add_argument("--dim", type=int, default=64, help="vector size of a synthetic bundle")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-publish", action="store_true", help="build only; publish later with `bundle publish`")
    b.set_defaults(func=cmd_bundle_build)
    p = sub.add_parser("publish", help="validate a bundle of the bundle dir and make it the one served")
    p.add_argument("bundle_id")
    p.set_defaults(func=cmd_bundle_publish)
    sub.add_parser("rollback", help="move CURRENT back to the newest earlier bundle that validates "
                   "(every service follows)").set_defaults(func=cmd_bundle_rollback)
    sub.add_parser("list", help="bundles on disk, the current one marked").set_defaults(func=cmd_bundle_list)

    from cli.bench.freshness import add_bench_parser
    from cli.bench.serving import add_bench_parsers

    add_bench_parsers(benches)
    add_bench_parser(benches)


def cmd_serve(args, settings) -> int:
    # Before faiss/torch load: their OpenMP pools size themselves from the environment.
    os.environ["OMP_NUM_THREADS"] = str(settings.serving.omp_threads)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    workers = args.workers or settings.serving.workers
    from sassflow.processes import PROMETHEUS_DIR_VARIABLES

    for name in PROMETHEUS_DIR_VARIABLES:  # before prometheus_client is imported: one process, own metrics
        os.environ.pop(name, None)
    host, port = args.host or settings.serving.host, args.port or settings.serving.port
    if workers > 1:
        return _serve_workers(settings, workers, host, port, args.static_features)
    import uvicorn

    from serving.app import create_app_from

    app = create_app_from(settings, args.static_features)
    uvicorn.run(app, host=host, port=port,
                access_log=False, log_level="warning")  # loop/http "auto": uvloop + httptools when installed
    return 0


def _serve_workers(settings, workers: int, host: str, port: int, static_features: Path | None) -> int:
    """uvicorn's supervisor with ``workers`` spawned processes on one socket.  Each loads the bundle and
    follows CURRENT itself; their metrics go to a fresh prometheus_client multiprocess folder, summed
    by whichever worker answers /metrics (``serving.metrics``)."""
    import shutil
    import tempfile

    import uvicorn

    from sassflow.processes import PROMETHEUS_MULTIPROC_DIR, child_env
    from serving.app import STATIC_FEATURES_ENV

    metrics_dir = tempfile.mkdtemp(prefix="sassflow-metrics-")
    os.environ.update(child_env(settings))  # the workers' settings: exactly these
    os.environ[PROMETHEUS_MULTIPROC_DIR] = metrics_dir
    if static_features:
        os.environ[STATIC_FEATURES_ENV] = str(static_features.resolve())
    try:
        uvicorn.run("serving.app:app_from_environment", factory=True, workers=workers, host=host, port=port,
                    access_log=False, log_level="warning")
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def _mark_published(settings, manifest: dict) -> None:
    """Record the publication in the model registry when the bundle holds a registered model."""
    from training.registry import ModelRegistry

    version = manifest.get("model_version")
    if isinstance(version, int):
        ModelRegistry.from_settings(settings).mark_published(version, manifest["bundle_id"])


def _refused(action: str, exc: Exception) -> int:
    """A bad bundle is an expected outcome, not a crash: one line on stderr, exit code 1."""
    print(f"{action} refused: {exc}", file=sys.stderr)
    return 1


def cmd_bundle_build(args, settings) -> int:
    from serving.bundle import BundleError

    try:
        return _build(args, settings)
    except BundleError as exc:
        return _refused("bundle build", exc)


def _build(args, settings) -> int:
    from serving.bundle import build_bundle, build_synthetic_bundle

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    if args.synthetic:
        path = build_synthetic_bundle(settings, args.synthetic, args.dim, seed=args.seed,
                                      publish=not args.no_publish, progress=progress)
    else:
        from training.registry import ModelRegistry

        from training.export import ArtifactError

        artifact_dir = args.artifact_dir
        if artifact_dir is None:
            try:  # the registry's stored copy, checked against its checksum
                artifact_dir = ModelRegistry.from_settings(settings).artifact(args.model_version)
            except (KeyError, ArtifactError) as exc:
                print(f"cannot build: {exc.args[0]}", file=sys.stderr)
                return 2
        path = build_bundle(settings, artifact_dir, args.model_version, publish=not args.no_publish,
                            progress=progress)
        if not args.no_publish:
            from serving.bundle import read_manifest

            _mark_published(settings, read_manifest(path))
    print(json.dumps({"bundle_id": path.name, "path": str(path), "published": not args.no_publish}))
    return 0


def cmd_bundle_publish(args, settings) -> int:
    from serving.bundle import BundleError, publish_bundle

    try:
        manifest = publish_bundle(settings, args.bundle_id)
    except BundleError as exc:
        return _refused("publish", exc)
    _mark_published(settings, manifest)
    print(json.dumps({"published": args.bundle_id}))
    return 0


def cmd_bundle_rollback(args, settings) -> int:
    from serving.bundle import BundleError, rollback_bundle

    try:
        bundle_id = rollback_bundle(settings).bundle_id
    except BundleError as exc:
        return _refused("rollback", exc)
    print(json.dumps({"current": bundle_id}))
    return 0


def cmd_bundle_list(args, settings) -> int:
    from serving.bundle import list_bundles

    for b in list_bundles(settings):
        print(json.dumps(b))
    return 0
