"""How commands end: benchmarks and reports print one JSON object as the last line of stdout."""
from __future__ import annotations

import json
import sys


def emit_json(result: dict) -> None:
    sys.stdout.flush()
    print(json.dumps(result, default=float), flush=True)
