"""The demo's outputs: the console summary and ``report.html``.

The report tells the run's story at a glance: what data went in, how fast it was ingested, what
each retrain decided and why (the quality gate against the promoted model and the popularity
baseline), how the service behaved during the hot swap; then the plots (latency on a log axis with
p50/p99, quality per model with the gate's verdict, training losses per stage and retrain), and the
raw summary, collapsed, at the bottom.  ``render_report`` is pure (summary in, HTML out).
"""
from __future__ import annotations

import html
import json
from pathlib import Path

RETRAINS = ("retrain1", "retrain2")
STAGES = {"pretrain": "stage 1: contrastive pre-training", "finetune": "stage 2: fine-tuning on clicks"}
SOURCES = {
    "SyntheticSource": "synthetic events: a deterministic generated stream with planted structure (users' "
                       "latent interests shared across scenarios plus a scenario-specific taste, items with Zipf "
                       "popularity per scenario); used with --source synthetic or when no MovieLens folder is found",
    "MovieLensSource": "MovieLens ratings replayed in time order (every rating an impression in its movie's "
                       "scenario, a rating of 4 or more also a click)",
}


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
            "ranking": ranking_summary(r.get("train_rankers") or {}), "content": content_summary(r.get("content_tower")),
            "bundle_id": pub.get("bundle_id"), "model_version": pub.get("model_version")}


def ranking_summary(rankers: dict) -> dict:
    """The rankers' gate and their test NDCG@10 / recall@10 next to the recall order's (macro means)."""
    test = (rankers.get("metrics") or {}).get("test") or {}
    return {"included": rankers.get("included"), "reason": rankers.get("reason"),
            "test": {name: {m: (v.get("mean") if isinstance(v, dict) else v) for m, v in metrics.items()
                            if isinstance(v, dict)} for name, metrics in test.items() if isinstance(metrics, dict)}}


def content_summary(content: dict | None) -> dict:
    content = content or {}
    return {k: content.get(k) for k in ("content", "reason", "catalogue_items", "cold_items_added", "blend")}


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    t = Table(title=f"sassflow demo {summary.get('run_id')}")
    t.add_column("what")
    t.add_column("value")
    for what, value in summary_rows(summary):
        t.add_row(what, value)
    console.print(t)
    for r in RETRAINS:
        if summary.get(r, {}).get("quality_test"):
            q = Table(title=f"{r}: test metrics (macro mean over scenarios)")
            metrics = sorted({m for v in summary[r]["quality_test"].values() for m in v})
            q.add_column("model")
            for m in metrics:
                q.add_column(m)
            for name, vals in summary[r]["quality_test"].items():
                q.add_row(name, *[f"{vals.get(m, float('nan')):.4f}" for m in metrics])
            console.print(q)


# ---------------------------------------------------------------- the summary table

def _num(value, digits: int = 4) -> str:
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, (int, float)):
        return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_num(v, digits)}" for k, v in value.items())
    return str(value)


def _ingest(phase: dict) -> str:
    events, seconds = phase["produced"]["events"], phase.get("ingest_s") or 0
    rate = f", {events / seconds:,.0f} events/s" if seconds else ""
    return f"{events:,} events in {seconds} s{rate} (history now {phase['history_events']:,})"


def _gate(run: dict) -> str:
    gate = run.get("gate") or {}
    if gate.get("promoted") is None:
        return f"DAG {run.get('state')}: no gate decision"
    verdict = "promoted" if gate["promoted"] else "rejected"
    numbers = [f"{k} {_num(gate[k])}" for k in ("candidate", "champion", "popularity") if gate.get(k) is not None]
    version = f" v{gate['version']}" if gate.get("version") is not None else ""
    return f"{verdict}{version}: {gate.get('reason')}" + (f" ({'; '.join(numbers)})" if numbers else "")


def _ranking(ranking: dict) -> str:
    if ranking.get("included") is None:
        return "—"
    test = ranking.get("test") or {}
    ndcg = ", ".join(f"{name} {_num(m.get('ndcg@10'))}" for name, m in test.items() if m.get("ndcg@10") is not None)
    return (f"{'shipped' if ranking['included'] else 'left out'}: {ranking.get('reason')}"
            + (f" (test NDCG@10: {ndcg})" if ndcg else ""))


def _new_item(answer: dict) -> str:
    if not answer.get("found"):
        return f"none seen within the wait (branches asked: {answer.get('asked_branches')})"
    return (f"item {answer['item_id']} (not in the served bundle) at rank {answer['rank']} of "
            f"{answer.get('k', 20)} for user "
            f"{answer['user_id']} in {answer['scenario']}, branch {answer['branch']}: \"{answer['reason']}\"")


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """(what, value) rows: data, ingest, each retrain's decision, the swap, wall time."""
    rows = [("data source", f"{summary.get('source', '—')}: "
                            f"{SOURCES.get(summary.get('source'), 'events from the configured source')}"),
            ("events", _num(summary.get("events_total")))]
    for phase in ("phase1", "phase2"):
        if phase in summary:
            rows.append((f"ingest {phase}", _ingest(summary[phase])))
            check = summary[phase].get("features_check")
            if check:
                rows.append((f"features check {phase}", f"{check['mismatched_keys']} of {check['sampled_keys']} sampled "
                                                        "online rows differ from the history's recomputation"))
    for r in RETRAINS:
        if r in summary:
            run = summary[r]
            rows.append((f"{r} (DAG {run.get('state')}, {run.get('seconds')} s)", _gate(run)))
            if run.get("bundle_id"):
                rows.append((f"{r} bundle", f"{run['bundle_id']} (model v{run.get('model_version')})"))
            rows.append((f"{r} rankers", _ranking(run.get("ranking") or {})))
    if "hot_swap" in summary:
        h = summary["hot_swap"]
        swapped = f"swapped to {h.get('new_bundle')}" if h.get("swapped") else "no new bundle to swap to"
        rows.append(("hot swap under load", f"{h['requests']:,} requests, {h['failed']} failed, p50 {h['p50_ms']} ms, "
                                           f"p99 {h['p99_ms']} ms; {swapped}"))
        for n, failure in enumerate(h.get("failures") or [], start=1):
            rows.append((f"failed request {n}", str(failure)[:200]))
    for how, answer in (summary.get("new_items") or {}).items():
        if isinstance(answer, dict):
            rows.append((f"new item {how.replace('_', ' ')}", _new_item(answer)))
    rows.append(("wall time", f"{summary.get('wall_s', '—')} s"))
    rows.append(("ok", str(summary.get("ok"))))
    return rows


def quality_note(run_name: str, run: dict, metric: str = "recall@50") -> str | None:
    """A sentence on SASS against the popularity baseline, when both were measured."""
    q = run.get("quality_test") or {}
    sass, pop = (q.get("sass") or {}).get(metric), (q.get("pop") or {}).get(metric)
    if sass is None or pop is None:
        return None
    if sass > pop:
        return f"{run_name}: SASS test {metric} {sass:.4f} is above the popularity baseline ({pop:.4f})."
    return (f"{run_name}: SASS test {metric} {sass:.4f} is below the popularity baseline ({pop:.4f}): on this "
            "run the model does not beat recommending each scenario's most clicked items.")


# ---------------------------------------------------------------- plots

def _png(fig) -> str:
    import base64
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def latency_figure(latency_ms: list[float]) -> str:
    import matplotlib.pyplot as plt
    import numpy as np

    lat = np.clip(np.asarray(latency_ms, dtype=float), 0.01, None)
    p50, p99 = np.percentile(lat, [50, 99])
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.hist(lat, bins=np.geomspace(lat.min(), lat.max() * 1.01, 50), color="#3b7dd8")
    ax.set_xscale("log")
    for value, name, color in ((p50, "p50", "#1a9850"), (p99, "p99", "#d73027")):
        ax.axvline(value, color=color, linestyle="--", linewidth=2, label=f"{name} {value:.1f} ms")
    ax.legend()
    ax.set_xlabel("GET /recommend latency during the hot swap (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title(f"{len(lat):,} requests from the demo's clients")
    return _png(fig)


def quality_figure(run_name: str, run: dict) -> str:
    import matplotlib.pyplot as plt

    q = run["quality_test"]
    names, metrics = list(q), sorted({m for v in q.values() for m in v})
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(metrics))]
        bars = ax.bar(xs, [q[name].get(m) or 0 for m in metrics], width, label=name)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylabel("test score (mean over scenarios)")
    ax.set_ylim(0, max([v or 0 for vals in q.values() for v in vals.values()] + [0.1]) * 1.2)
    ax.set_title(f"{run_name}: {_gate(run)}"[:110], fontsize=9)
    ax.legend(fontsize=8)
    return _png(fig)


def loss_figure(summary: dict) -> str | None:
    import matplotlib.pyplot as plt

    runs = [r for r in RETRAINS if any(((summary.get(r) or {}).get("loss_curves") or {}).values())]
    if not runs:
        return None
    fig, axes = plt.subplots(1, len(STAGES), figsize=(10, 3.2), squeeze=False)
    for ax, (stage, title) in zip(axes[0], STAGES.items()):
        for r in runs:
            curve = summary[r]["loss_curves"].get(stage) or []
            if curve:
                ax.plot(range(1, len(curve) + 1), curve, marker=".", label=r)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("logged step (mean of consecutive steps)")
        ax.set_ylabel("training loss")
        ax.legend(fontsize=8)
    return _png(fig)


# ---------------------------------------------------------------- the page

_STYLE = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}
table{border-collapse:collapse;width:100%} td,th{border-bottom:1px solid #ddd;padding:.35em .6em;text-align:left;vertical-align:top}
td:first-child{white-space:nowrap;color:#555} .ok{color:#1a9850} .bad{color:#d73027}
pre{background:#f4f4f4;padding:1em;overflow:auto;font-size:12px} img{max-width:100%} .note{color:#444}"""


def _table(rows: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td></tr>" for a, b in rows) + "</table>"


def _samples(summary: dict) -> str:
    rows = [(f"user {r['user_id']} · {r['scenario']}",
             f"HTTP {r['status']}, {'popular fallback' if r.get('fallback') else 'personal'}"
             f"{', ranked' if r.get('ranked') else ''}: "
             + "; ".join(f"{i} ({b}: {why})" for i, b, why in zip((r.get("items") or [])[:5], r.get("branches") or [],
                                                                r.get("reasons") or []))
             + " …") for r in summary.get("sample_recommendations", [])]
    return f"<details><summary>sample recommendations ({len(rows)})</summary>{_table(rows)}</details>" if rows else ""


def render_report(summary: dict, latency_ms: list[float]) -> str:
    title = f"sassflow demo {summary.get('run_id')}"
    ok = summary.get("ok")
    notes = [n for r in RETRAINS if r in summary for n in [quality_note(r, summary[r])] if n]
    figures = [("Latency during the hot swap", latency_figure(latency_ms) if latency_ms else None)]
    figures += [(f"Quality, {r}", quality_figure(r, summary[r])) for r in RETRAINS
                if (summary.get(r) or {}).get("quality_test")]
    figures.append(("Training losses", loss_figure(summary)))
    body = "".join(f"<h2>{html.escape(name)}</h2>{img}" for name, img in figures if img)
    raw = html.escape(json.dumps(summary, indent=2, default=str))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>
<p class="{'ok' if ok else 'bad'}"><b>{'the run succeeded' if ok else 'the run did not succeed'}</b>
in {html.escape(str(summary.get('wall_s', '—')))} s</p>
<h2>Summary</h2>{_table(summary_rows(summary))}
{''.join(f'<p class="note">{html.escape(n)}</p>' for n in notes)}
{_samples(summary)}
{body}
<h2>Raw summary</h2><details><summary>the demo's JSON summary</summary><pre>{raw}</pre></details>
</body></html>"""


def write_report(settings, summary: dict, latency_ms: list[float]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    out = Path(settings.state_dir) / "report.html"
    out.write_text(render_report(summary, latency_ms))
    return out
