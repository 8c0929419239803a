"""The report of a training or benchmark run: PNG plots + a JSON/Markdown summary.

- ``loss_curves.png``: loss per optimisation step of every stage of every model (smoothed);
- ``recall_per_scenario.png``: recall@50 per scenario and the mean, model against baselines.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _smooth(x: list[float], w: int = 25) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if len(a) < 2 * w:
        return a
    return np.convolve(a, np.ones(w) / w, mode="valid")


def write_report(out_dir, losses: dict[str, dict[str, list[float]]], metrics: dict[str, dict],
                 scenarios: list[str], title: str = "sassflow training", metric: str = "recall@50") -> dict:
    """losses: model -> stage -> per-step loss; metrics: model -> metric -> scenario id|mean -> value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    curves = [(m, st, v) for m, stages in losses.items() for st, v in stages.items() if v]
    stages = sorted({st for _, st, _ in curves})
    fig, axes = plt.subplots(1, max(1, len(stages)), figsize=(11, 4), squeeze=False)
    for ax, st in zip(axes[0], stages or ["(no training)"]):
        for m, s, v in curves:
            if s == st:
                ax.plot(_smooth(v), label=m)
        ax.set_title(f"{st} loss")
        ax.set_xlabel("step")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out / "loss_curves.png", dpi=90)
    plt.close(fig)

    keys = [str(k) for k in range(len(scenarios))] + ["mean"]
    labels = list(scenarios) + ["mean"]
    models = list(metrics)
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(1, len(models))
    for j, m in enumerate(models):
        vals = [metrics[m].get(metric, {}).get(k, np.nan) for k in keys]
        ax.bar(np.arange(len(keys)) + j * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, labels)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per scenario (test split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "recall_per_scenario.png", dpi=90)
    plt.close(fig)

    lines = [f"# {title}", "", f"| model | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(f"{metrics[m].get(metric, {}).get(k, float('nan')):.4f}"
                                              for k in keys) + " |")
    (out / "report.md").write_text("\n".join(lines) + "\n\n![loss](loss_curves.png)\n\n"
                                   "![recall](recall_per_scenario.png)\n")
    (out / "report.json").write_text(json.dumps({"title": title, "metrics": metrics}, indent=2))
    return {"dir": str(out), "plots": ["loss_curves.png", "recall_per_scenario.png"]}
