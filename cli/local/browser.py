"""Headless Chromium (Debian's ``chromium`` package, installed by scripts/setup.sh) for the checks a
person would make by looking: a page's DOM after its scripts ran, and a screenshot.

The browser runs offline: every host name but 127.0.0.1 fails to resolve, so a page that loads
anything from the internet (a CDN script, a font, a badge) renders without it and the check sees
that.  Each run gets a fresh profile in a temporary folder.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--hide-scrollbars",
         "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")  # offline but for loopback


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise FileNotFoundError("no Chromium found: `apt-get install chromium` (scripts/setup.sh does)")


def _run(url: str, args: list[str], budget_ms: int, timeout: float) -> str:
    with tempfile.TemporaryDirectory(prefix="sassflow-chromium-") as profile:
        cmd = [find_chromium(), *FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", *args, url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"chromium exited with {out.returncode}: {out.stderr[-2000:]}")
    return out.stdout


def rendered_dom(url: str, budget_ms: int = 15_000, timeout: float = 120) -> str:
    """The page's DOM, serialised after its scripts had ``budget_ms`` of (virtual) time to run."""
    return _run(url, ["--dump-dom"], budget_ms, timeout)


def screenshot(url: str, path: Path, size: tuple[int, int] = (1280, 1800), budget_ms: int = 15_000,
               timeout: float = 120) -> Path:
    """A PNG of the page as rendered after ``budget_ms``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _run(url, [f"--screenshot={path}", f"--window-size={size[0]},{size[1]}"], budget_ms, timeout)
    if not path.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {path}")
    return path
