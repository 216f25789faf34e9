"""Data-parallel training under torchrun: two CPU processes on the gloo backend train the CV
together and rank 0 alone writes one bundle the node can load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.model.bundle import Manifest
from pipeline.model.infer import FoldEnsemble
from pipeline.phantom import generate_cohort


def test_torchrun_two_cpu_processes_write_one_bundle(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.fail("torchrun is installed with torch in the same environment")
    generate_cohort(tmp_path / "cohort", 8, 0.5, seed=5, geometry="axial2d", mask_kind="seg")
    done = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "training.cli",
         "--cohort", str(tmp_path / "cohort" / "labels.csv"), "--out", str(tmp_path / "bundle"),
         "--folds", "2", "--epochs", "1", "--output-size", "32", "--no-bias-correction", "--lr", "1e-3",
         "--selection", "paper", "--no-progress"],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert done.stdout.count("bundle ") == 1  # rank 0 alone reports
    manifest = Manifest.load_checked(tmp_path / "bundle")
    assert manifest.training["processes"] == 2
    assert len(manifest.folds) == 2
    prediction = FoldEnsemble.load(tmp_path / "bundle").predict(np.zeros((5, 3, 32, 32), dtype=np.float32))
    assert prediction.scores.shape == (2, 5)
