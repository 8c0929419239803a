"""The layer rules of pyproject.toml ([tool.importlinter]) hold, and the contracts have one home."""
from __future__ import annotations

import subprocess
import sys

from sassflow.settings import PROJECT_ROOT


def test_import_linter_contracts_hold():
    """ground <- features <- streaming <- training <- serving <- dags <- cli, no cycles, serving
    only touches training's model code (lint-imports reads the contracts from pyproject.toml)."""
    r = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                        "sys.exit(lint_imports_command())"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                       env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "broken" in r.stdout and " 0 broken" in r.stdout


def test_feature_views_derive_from_the_contract():
    """The Feast views (stored columns), the rows the stream computes and serving's reader (read-time
    rows) all use the contract's names."""
    from features import definitions
    from sassflow.contracts import features as contract
    from serving.feature_reader import FEATURE_NAMES
    from streaming.aggregate import Ev, batch_features

    for fv, view in zip(definitions.FEATURE_VIEWS, contract.VIEWS):
        assert fv.name == view.name and [f.name for f in fv.features] == view.feature_names
        assert fv.entities == [definitions.ENTITIES[k].name for k in view.join_keys]
    rows = batch_features([Ev("e1", 1, 7, "drama", True, 1_700_000_000_000)], ["family", "drama"])
    for view, keyed in rows.by_view():
        (features, _), = keyed.values()
        assert sorted(features) == sorted(view.feature_names)
    assert FEATURE_NAMES == [n for v in contract.USER_VIEWS for n in v.row_names]


def test_feast_internals_of_the_pinned_version_are_in_place():
    """features/feast_internals.py uses Feast private names for speed: an upgrade that moves them fails here."""
    from features.feast_internals import check_pinned_feast

    assert check_pinned_feast() == []
