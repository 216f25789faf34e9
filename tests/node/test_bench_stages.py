"""``tests/bench_ingest.py --stages`` times the node's receive path by wrapping the functions it
runs, named in a table. A refactor that moves one of them broke the profile once (the
dataset walk had moved from ``receive.scp`` to ``store.accept``: AttributeError) and left a
row silently at zero calls (the file meta encoder the node installs over pynetdicom's). Here
the table is run on a real association: every stage is reached for an image."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.bench_ingest import stage_profile
from tests.dicom_factory import mr_series, write_all


def test_every_stage_the_ingest_profile_names_is_what_the_node_runs(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("storescu") is None:
        pytest.fail("storescu not found: apt-get install dcmtk")
    files = write_all(mr_series(4, rows=16, columns=16), tmp_path / "study")
    calls = stage_profile(files, tmp_path)
    reached = {label: n for label, n in calls.items() if "masks only" not in label}  # an image has no header read
    assert all(n >= 1 for n in reached.values()), reached
    assert calls["header read by pydicom (masks only)"] == 0
    printed = capsys.readouterr().out
    assert all(label in printed for label in calls), printed  # the table a reader sees has every row
