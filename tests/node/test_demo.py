"""``egfr-node demo``, the README's first command, as a user runs it (smaller cohort, one epoch)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.node.process import cli


def test_demo_runs_end_to_end_and_prints_the_result(tmp_path: Path) -> None:
    done = cli(tmp_path / "absent.toml", "demo", "--dir", str(tmp_path / "demo"), "--patients", "6", "--epochs", "1",
               timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    status = re.search(r"EGFR mutation status: (POSITIVE|NEGATIVE)\s+probability (\d\.\d{3})", done.stdout)
    assert status, done.stdout[-3000:]
    sr = re.search(r"read the SR with `dsrdump (\S+)`", done.stdout)
    assert sr and Path(sr.group(1)).is_file()
    assert "What a real deployment changes" in done.stdout
