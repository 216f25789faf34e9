"""``egfr-node demo``, the README's first command, as a user runs it (smaller cohort, one epoch)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.node.process import cli


def test_demo_runs_end_to_end_and_prints_the_result(tmp_path: Path) -> None:
    done = cli(tmp_path / "absent.toml", "demo", "--dir", str(tmp_path / "demo"), "--patients", "6", "--epochs", "1",
               timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = re.search(r"EGFR mutation status: (POSITIVE|NEGATIVE)\s+calibrated probability (\d\.\d{3})", done.stdout)
    assert status, done.stdout[-3000:]
    sr = re.search(r"read the SR with `dsrdump (\S+)`", done.stdout)
    assert sr and Path(sr.group(1)).is_file()
    assert "What a real deployment changes" in done.stdout
    # the demo bundle's report says what its preprocessing was, in sections generated from its parameters
    report = (tmp_path / "demo" / "bundle" / "report.md").read_text()
    preprocessing = report.split("## Preprocessing", 1)[1].split("\n## ", 1)[0]
    assert "32 px" in preprocessing and "N4 off" in preprocessing
    deviations = report.split("## Deviations from Haim et al. 2022", 1)[1].split("\n## ", 1)[0]
    assert "Crop size: 32 px" in deviations and "N4 off" in deviations
