"""The demo's report.html tells the run's story: rendered from a stored demo summary (the JSON line of
a ``sassflow demo --quick --source synthetic --limit 30000 --users 800 --items 1500`` run, test_demo's
sizes) and looked at in headless Chromium."""
from __future__ import annotations

import html
import json
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image

from cli.demo.report import render_report, write_report
from cli.local.browser import screenshot

SUMMARY = Path(__file__).parent / "data" / "demo_summary.json"


def latency_sample() -> list[float]:
    return np.random.default_rng(0).lognormal(np.log(15.0), 0.6, 14_083).tolist()  # the run's count, p50


def table_rows(page: str) -> dict[str, str]:
    cells = re.findall(r"<tr><td>(.*?)</td><td>(.*?)</td></tr>", page)
    return {html.unescape(a): html.unescape(b) for a, b in cells}


def test_the_summary_table_tells_the_run_at_a_glance():
    summary = json.loads(SUMMARY.read_text())
    page = render_report(summary, latency_sample())
    rows = table_rows(page)
    assert rows["data source"].startswith("SyntheticSource: synthetic events: a deterministic generated stream")
    assert rows["events"] == "30,000"
    assert rows["ingest phase1"] == "24,000 events in 83.4 s, 288 events/s (history now 24,000)"
    assert rows["retrain1 (DAG success, 60.2 s)"] == "promoted v1: first promoted model (val recall@50 0.2725)"
    assert rows["retrain2 (DAG success, 40.0 s)"] == (
        "rejected v2: val recall@50 0.2036 < promoted v1 0.2725 - tolerance 0.02")
    assert rows["hot swap under load"] == ("14,083 requests, 0 failed, p50 15.63 ms, p99 79.67 ms; "
                                           "no new bundle to swap to")
    assert rows["wall time"] == "264.0 s" and "the run succeeded</b>\nin 264.0 s" in page
    # SASS below popularity is said, not left for the reader to spot
    assert "retrain2: SASS test recall@50 0.2439 is below the popularity baseline (0.5076)" in html.unescape(page)
    # the plots: latency, quality per retrain, losses; the raw JSON collapsed at the bottom
    assert page.count('<img alt="" src="data:image/png;base64,') == 4
    raw = re.search(r"<details><summary>the demo's JSON summary</summary><pre>(.*?)</pre></details>", page, re.S)
    assert json.loads(html.unescape(raw.group(1))) == summary
    assert page.index("<h2>Summary</h2>") < page.index("<img") < page.index("<h2>Raw summary</h2>")


def test_the_gate_numbers_show_when_the_summary_has_them():
    summary = json.loads(SUMMARY.read_text())
    summary["retrain2"]["gate"].update(candidate=0.2036, champion=0.2725, popularity=0.4810)
    rows = table_rows(render_report(summary, latency_sample()))
    assert rows["retrain2 (DAG success, 40.0 s)"].endswith("(candidate 0.2036; champion 0.2725; popularity 0.4810)")


def test_a_failed_run_says_what_failed():
    summary = json.loads(SUMMARY.read_text())
    summary["ok"] = False
    summary["hot_swap"].update(failed=1, failures=['HTTP 503: {"detail":"no bundle loaded yet","reason":"not_ready"}'])
    page = render_report(summary, latency_sample())
    assert "the run did not succeed" in page
    assert table_rows(page)["failed request 1"] == 'HTTP 503: {"detail":"no bundle loaded yet","reason":"not_ready"}'


def test_a_partial_run_still_renders(tmp_path):
    summary = {"run_id": "x", "source": "MovieLensSource", "ok": False, "interrupted": True, "wall_s": 3.2}
    page = render_report(summary, [])
    assert "the run did not succeed" in page and table_rows(page)["data source"].startswith("MovieLensSource: MovieLens")


def test_the_report_reads_well_in_a_browser(tmp_path):
    from sassflow.settings import Settings

    settings = Settings(state_dir=tmp_path)
    report = write_report(settings, json.loads(SUMMARY.read_text()), latency_sample())
    out = Path(os.environ.get("SASSFLOW_SCREENSHOT_DIR", tmp_path)) / "report.png"
    screenshot(report.resolve().as_uri(), out, size=(1100, 3400), budget_ms=2_000)
    pixels = np.asarray(Image.open(out).convert("L"))
    assert (pixels < 128).mean() > 0.01 and (pixels > 200).mean() > 0.3
    print(f"screenshot: {out}")
