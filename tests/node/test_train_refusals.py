"""``egfr-node train`` checks its cohort before it pins or trains anything (issue 29, items 7
and 10): a row naming a study the node never received stops it (exit 2, the row and the UID
on one line) unless ``--skip-missing``; a cohort of one class is refused before a single study
is pinned; pins a failed run made are released."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.phantom import generate_cohort
from tests.node.process import cli, free_port, write_config

TINY = ["--folds", "2", "--epochs", "1", "--output-size", "32", "--no-bias-correction", "--no-progress"]
MISSING = "1.2.826.0.1.3680043.9.7.4242"


def _spreadsheet(path: Path, rows: list[dict], extra: list[list[str]] = ()) -> Path:  # type: ignore[assignment]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "study_uid", "egfr_status"])
        writer.writerows([r["patient_id"], r["study_uid"], r["egfr_status"]] for r in rows)
        writer.writerows(extra)
    return path


def test_train_refuses_an_unarchived_row_and_a_one_class_cohort_before_pinning(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, 6, 0.5, seed=12, geometry="axial2d", mask_kind="seg")
    with open(cohort / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    config = write_config(tmp_path / "node", free_port())
    assert cli(config, "db", "upgrade").returncode == 0
    assert cli(config, "import", str(cohort), "--quiet", timeout=300).returncode == 0

    missing = _spreadsheet(tmp_path / "missing.csv", rows, [["P-X", MISSING, "positive"]])
    refused = cli(config, "train", "--cohort", str(missing), "--out", str(tmp_path / "b1"), *TINY, timeout=300)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    [line] = [line for line in refused.stderr.splitlines() if MISSING in line]
    assert "row 8" in line and "not in the node's archive" in line and "--skip-missing" in line
    assert not (tmp_path / "b1").exists()
    assert "0 pinned" in cli(config, "archive", "usage").stdout

    negatives = [r for r in rows if r["egfr_status"] == "negative"]
    one_class = _spreadsheet(tmp_path / "one.csv", negatives)
    refused = cli(config, "train", "--cohort", str(one_class), "--out", str(tmp_path / "b2"), *TINY, timeout=300)
    assert refused.returncode == 1 and "both classes are needed" in refused.stderr, refused.stderr
    assert "0 pinned" in cli(config, "archive", "usage").stdout  # checked before anything was pinned

    skipped = cli(config, "train", "--cohort", str(missing), "--out", str(tmp_path / "b3"), "--skip-missing", *TINY,
                  timeout=900)
    assert skipped.returncode == 0, skipped.stdout[-2000:] + skipped.stderr[-2000:]
    assert f"skipped: row 8: study {MISSING} is not in the node's archive" in skipped.stdout
    assert f"{len(rows)} pinned" in cli(config, "archive", "usage").stdout
