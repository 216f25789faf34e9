"""``train --deterministic`` and ``train --resume``: two CPU runs of the same cohort and
arguments give the same fold weights bit for bit, and a run SIGKILLed between epochs, resumed,
gives the weights of the run that was never interrupted."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.model.bundle import Manifest
from training import cli
from training.cli import checkpoints_of
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["--epochs", "8", "--folds", "2", "--output-size", "32", "--no-bias-correction", "--lr", "1e-3", "--loss", "ce",
        "--selection", "nested", "--no-progress", "--deterministic"]


def fold_digests(bundle: Path) -> list[str]:
    return [fold.sha256 for fold in Manifest.load_checked(bundle).folds]


@pytest.fixture(scope="module")
def uninterrupted(clear_cohort: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    out = tmp_path_factory.mktemp("resume") / "uninterrupted"
    assert cli.main(["--cohort", str(clear_cohort), "--out", str(out), "--cache", str(cache_dir), *ARGS]) == 0
    assert not checkpoints_of(out).exists()  # removed once the bundle is written
    return fold_digests(out)


def test_two_deterministic_cpu_runs_give_the_same_weights(uninterrupted: list[str], clear_cohort: Path, cache_dir: Path,
                                                         tmp_path: Path) -> None:
    assert cli.main(["--cohort", str(clear_cohort), "--out", str(tmp_path / "again"), "--cache", str(cache_dir), *ARGS]) == 0
    assert fold_digests(tmp_path / "again") == uninterrupted


def _epochs_saved(folder: Path) -> list[int]:
    epochs = []
    for path in sorted(folder.glob("seed0-fold*.pt")):
        try:
            epochs.append(int(torch.load(path, weights_only=True)["epoch"]))
        except Exception:  # being replaced this instant: read it next time
            epochs.append(0)
    return epochs


def test_a_run_killed_between_epochs_and_resumed_gives_the_uninterrupted_weights(
        uninterrupted: list[str], clear_cohort: Path, cache_dir: Path, tmp_path: Path, capsys, caplog) -> None:
    out = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "EGFR_NODE_CONFIG"}
    run = subprocess.Popen([sys.executable, "-m", "training.cli", "--cohort", str(clear_cohort), "--out", str(out),
                            "--cache", str(cache_dir), *ARGS], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    def two_epochs_saved_or_ended() -> bool:
        saved = _epochs_saved(checkpoints_of(out))
        return run.poll() is not None or (len(saved) == 2 and min(saved) >= 2)

    wait_for(two_epochs_saved_or_ended, 300, "both folds' checkpoints at epoch 2", every=0.02)
    assert run.poll() is None, f"the run ended before it could be killed: {run.stderr.read()[-2000:]}"
    run.send_signal(signal.SIGKILL)
    run.wait(30)
    saved = _epochs_saved(checkpoints_of(out))
    assert not out.exists() and 2 <= min(saved) and max(saved) < 8, saved

    # a new run to the same folder does not start over the interrupted one
    assert cli.main(["--cohort", str(clear_cohort), "--out", str(out), "--cache", str(cache_dir), *ARGS]) == 1
    assert "train --resume" in capsys.readouterr().err

    with caplog.at_level(logging.INFO, logger="training.engine"):
        assert cli.main(["--resume", str(out), "--no-progress"]) == 0
    resumed = sorted(r.getMessage().split(":")[0] + f" {r.args[1]}" for r in caplog.records if "resumed after epoch" in r.getMessage())
    assert resumed == [f"fold {k + 1} {e}" for k, e in enumerate(saved)], resumed  # it went on, it did not start again
    assert fold_digests(out) == uninterrupted
    assert not checkpoints_of(out).exists()
