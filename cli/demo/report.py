"""The demo's outputs: the console summary and the HTML report."""
from __future__ import annotations

import json
from pathlib import Path


def compact_run(r: dict) -> dict:
    """The parts of a DAG run worth showing."""
    ev = r.get("evaluate") or {}
    gate = r.get("quality_gate") or {}
    pub = r.get("publish") or {}
    quality = {}
    for name, metrics in [("sass", (ev.get("candidate") or {}).get("test", {}))] + [
            (k, v.get("test", {})) for k, v in (ev.get("baselines") or {}).items()]:
        quality[name] = {m: (v.get("mean") if isinstance(v, dict) else v) for m, v in metrics.items()
                         if isinstance(v, dict)}
    curves = {stage: (r.get(stage) or {}).get("loss_curve", []) for stage in ("pretrain", "finetune")}
    return {"state": r.get("state"), "seconds": r.get("seconds"), "tasks": r.get("tasks"), "loss_curves": curves,
            "quality_test": quality, "gate": {k: gate.get(k) for k in ("version", "promoted", "reason")},
            "bundle_id": pub.get("bundle_id"), "model_version": pub.get("model_version")}


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title=f"sassflow demo {summary.get('run_id')}")
    t.add_column("what")
    t.add_column("value")
    for phase in ("phase1", "phase2"):
        if phase in summary:
            p = summary[phase]
            t.add_row(f"{phase}: events produced / in history", f"{p['produced']['events']:,} / {p['history_events']:,}")
            t.add_row(f"{phase}: ingest seconds", str(p["ingest_s"]))
            t.add_row(f"{phase}: consumer lag after ingest", str(p.get("consumer_lag")))
    for r in ("retrain1", "retrain2"):
        if r in summary:
            x = summary[r]
            t.add_row(f"{r}: DAG state / seconds", f"{x['state']} / {x['seconds']}")
            t.add_row(f"{r}: gate", str(x["gate"]))
            t.add_row(f"{r}: bundle", f"{x['bundle_id']} (model v{x['model_version']})")
    if "hot_swap" in summary:
        h = summary["hot_swap"]
        t.add_row("load during swap: requests / failed", f"{h['requests']:,} / {h['failed']}")
        t.add_row("latency p50 / p99 ms", f"{h['p50_ms']} / {h['p99_ms']}")
        t.add_row("bundles seen by clients", ", ".join(map(str, h["bundles_seen"])))
    t.add_row("wall seconds", str(summary.get("wall_s")))
    t.add_row("ok", str(summary.get("ok")))
    console.print(t)
    for r in ("retrain1", "retrain2"):
        if summary.get(r, {}).get("quality_test"):
            q = Table(title=f"{r}: test metrics (macro mean over scenarios)")
            metrics = sorted({m for v in summary[r]["quality_test"].values() for m in v})
            q.add_column("model")
            for m in metrics:
                q.add_column(m)
            for name, vals in summary[r]["quality_test"].items():
                q.add_row(name, *[f"{vals.get(m, float('nan')):.4f}" for m in metrics])
            console.print(q)


def write_report(settings, summary: dict, latency_ms: list[float]) -> Path:
    """An HTML page with the summary, the quality tables and plots (latency, training losses)."""
    import base64
    import html
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig) -> str:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'

    figs = []
    if latency_ms:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.hist(latency_ms, bins=60, color="#3b7dd8")
        ax.set_xlabel("GET /recommend latency (ms) during the hot swap")
        ax.set_ylabel("requests")
        figs.append(png(fig))
    for r in ("retrain1", "retrain2"):
        q = summary.get(r, {}).get("quality_test") or {}
        if q:
            fig, ax = plt.subplots(figsize=(7, 3.2))
            names = list(q)
            metrics = sorted({m for v in q.values() for m in v})
            width = 0.8 / max(1, len(names))
            for i, name in enumerate(names):
                ax.bar([j + i * width for j in range(len(metrics))], [q[name].get(m, 0) or 0 for m in metrics],
                       width, label=name)
            ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(metrics))], metrics)
            ax.set_title(f"{r}: test metrics, macro mean over scenarios")
            ax.legend()
            figs.append(png(fig))
    for r in ("retrain1", "retrain2"):
        curves = (summary.get(r) or {}).get("loss_curves") or {}
        if any(curves.values()):
            fig, ax = plt.subplots(figsize=(7, 3.2))
            for stage, v in curves.items():
                if v:
                    ax.plot(v, label=stage)
            ax.set_title(f"{r}: training losses")
            ax.set_xlabel("step (means of consecutive steps)")
            ax.legend(fontsize=7)
            figs.append(png(fig))
    body = "\n".join(f"<div>{f}</div>" for f in figs)
    doc = f"""<!doctype html><html><head><meta charset="utf-8"><title>sassflow demo {summary.get('run_id')}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}} pre{{background:#f4f4f4;padding:1em;overflow:auto}}</style>
</head><body><h1>sassflow demo {summary.get('run_id')}</h1>
<p>ok: <b>{summary.get('ok')}</b> · wall {summary.get('wall_s', '…')} s</p>{body}
<h2>summary</h2><pre>{html.escape(json.dumps(summary, indent=2, default=str))}</pre></body></html>"""
    out = Path(settings.state_dir) / "report.html"
    out.write_text(doc)
    return out
