"""End to end through the CLI: cohort CSV -> bundle -> the node's FoldEnsemble; report files;
registration; determinism; an interrupted export leaves no bundle."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.model.aggregate import aggregate_slices
from pipeline.model.bundle import Manifest
from pipeline.model.infer import FoldEnsemble
from pipeline.model.network import build_resnet50, head_of
from pipeline.prepare import prepare_study
from training import cli, export
from training.cohort import read_cohort
from training.engine import patient_scores
from training.report import NOT_EXTERNAL_VALIDATION
from training.run import run_cv
from training.settings import TrainSettings

from .conftest import TEST_PARAMS

TINY = ["--epochs", "1", "--folds", "2", "--output-size", "32", "--no-bias-correction", "--lr", "1e-3", "--loss", "ce",
        "--no-progress"]


@pytest.fixture(scope="module")
def tiny_bundle(clear_cohort: Path, training_root: Path, cache_dir: Path) -> Path:
    out = training_root / "tiny-bundle"
    # the [training] table of the node's config file, as egfr-node train passes it
    assert cli.main(["--cohort", str(clear_cohort), "--out", str(out), "--cache", str(cache_dir),
                     "--selection", "nested", "--full-finetune", *TINY],
                    training_table={"bootstrap": 200, "batch_size": 32}) == 0
    return out


def test_bundle_loads_in_the_node_and_predicts_what_training_computes(tiny_bundle: Path, clear_cohort: Path) -> None:
    manifest = Manifest.load_checked(tiny_bundle)
    assert manifest.input_shape == (5, 3, 32) and manifest.preprocessing == TEST_PARAMS
    assert len(manifest.folds) == 2 and manifest.normalization == "none"
    assert manifest.architecture == "resnet50-linear"  # the scratch recipe's head, which the node builds
    assert manifest.training["recipe"] == "scratch" and "chosen automatically" in manifest.training["recipe_text"]
    assert manifest.training["selection_mode"] == "nested" and manifest.training["pretrained"] is False
    assert manifest.metrics["statement"] == NOT_EXTERNAL_VALIDATION
    assert {r["fold"] for r in manifest.training["splits"]} == {0, 1}
    ensemble = FoldEnsemble.load(tiny_bundle)
    entry = read_cohort(clear_cohort).entries[0]
    x = prepare_study(entry.folder, manifest.preprocessing).model_input.array
    prediction = ensemble.predict(x)
    # Training's own code on the same input: each fold's state_dict, engine.patient_scores, pipeline.model.aggregate.
    scores = []
    for fold in manifest.folds:
        model = build_resnet50(normalization=manifest.normalization, head=head_of(manifest.architecture))
        model.load_state_dict(torch.load(tiny_bundle / fold.file, weights_only=True))
        scores.append(patient_scores(model, torch.as_tensor(x)[None])[0])
    # the served rule by hand: slices by the bundle's aggregation per fold, the folds' logits
    # averaged, then the bundle's (logistic) calibration
    per_fold = np.clip(aggregate_slices(np.stack(scores), manifest.slice_aggregation), 1e-6, 1 - 1e-6)
    assert manifest.calibration_map.method == "logistic" and manifest.fold_scale == "logit"
    a, b = manifest.calibration["intercept"], manifest.calibration["slope"]
    ours = float(1 / (1 + np.exp(-(a + b * np.log(per_fold / (1 - per_fold)).mean()))))
    assert prediction.scores.shape == (2, 5)
    np.testing.assert_allclose(prediction.scores, np.stack(scores), atol=1e-5)
    assert prediction.probability == pytest.approx(ours, abs=1e-5)
    assert prediction.positive == (ours >= manifest.threshold)


def test_report_files_and_statements(tiny_bundle: Path) -> None:
    for name in ("report.md", "report.json", "roc.png", "calibration.png", "decision.png", "folds.csv", "splits.csv"):
        assert (tiny_bundle / name).is_file(), name
    report = json.loads((tiny_bundle / "report.json").read_text())
    text = (tiny_bundle / "report.md").read_text()
    assert report["data"]["patients_used"] == 30 and report["data"]["positive"] == 15
    assert "30 used: 15 EGFR positive, 15 negative" in text
    assert "not external validation" in text and "trained from scratch" in text and "Selection: nested" in text
    # records that follow what ran: the recipe's name, the rules that ran, generated sections
    assert report["name"] == "EGFR ResNet-50 (scratch recipe, not Haim 2022)" and "Haim 2022 recipe)" not in text
    assert "the last epoch (nothing chosen on data)" in report["selection_text"]  # the scratch recipe's metric is "last"
    assert "Youden's J on each training fold's inner patients" in report["selection_text"]
    assert "## Preprocessing" in text and "resized to 32 px" in text and "N4 off" in text
    assert "## Deviations from Haim et al. 2022" in text and "Crop size: 32 px; the paper resized to 96 px" in text
    assert "## The served rule, out of fold" in text and "egfr-node evaluate" in text
    served = report["served_rule"]
    assert served["calibration"]["method"] == "logistic" and served["calibration"]["patients"] == 30
    # one repeat: the map says, wherever it is shown, that it was fitted on single fold models
    assert "fitted on one fold model's score per patient while the node serves the mean of" in served["calibration"]["note"]
    assert "Fold combination: the node takes the mean of the fold models' patient scores on the logit scale" in text
    assert served["out_of_fold"]["auc"] == report["metrics_summary"]["pooled_patient_auc"]
    assert report["headline"]["calibration_raw"]["brier"] is not None
    assert report["selection_mode"] == "nested" and report["pretrained"] is False
    assert set(report["table2"]) == {"min", "max", "median", "mean"}
    with open(tiny_bundle / "folds.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 30 and {r["fold"] for r in rows} == {"0", "1"}
    assert all(0.0 <= float(r["median"]) <= 1.0 for r in rows)
    assert all(0.0 <= float(r["served_probability"]) <= 1.0 for r in rows)
    assert (tiny_bundle / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_register_records_the_bundle_without_activating(clear_cohort: Path, training_root: Path, cache_dir: Path,
                                                        tmp_path: Path) -> None:
    from db.bundles import activate, active, list_bundles
    from db.engine import make_engine, make_sessionmaker

    url = f"sqlite:///{tmp_path / 'node.db'}"
    out = tmp_path / "bundle"
    assert cli.main(["--cohort", str(clear_cohort), "--out", str(out), "--cache", str(cache_dir), "--register",
                     "--selection", "paper", *TINY], database_url=url) == 0
    sessions = make_sessionmaker(make_engine(url))
    with sessions.begin() as s:
        records = list_bundles(s)
        assert len(records) == 1 and records[0].bundle_path == str(out.resolve()) and not records[0].active
        assert active(s) is None
        activate(s, records[0].id)
    with sessions.begin() as s:
        assert FoldEnsemble.load(Path(active(s).bundle_path)).folds == 2
    assert cli.main(["--cohort", str(clear_cohort), "--out", str(tmp_path / "b2"), "--register", *TINY]) == 1  # no database


def test_interrupted_export_leaves_no_bundle(clear_cohort: Path, tmp_path: Path, cache_dir: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save
    calls = []

    def save_then_interrupt(obj, path, *args, **kwargs):
        if ".partial-" in str(path):  # the bundle's staging folder (not the per-epoch checkpoints)
            calls.append(path)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(export.torch, "save", save_then_interrupt)
    out = tmp_path / "bundle"
    assert cli.main(["--cohort", str(clear_cohort), "--out", str(out), "--cache", str(cache_dir), "--selection", "paper",
                     *TINY]) == 130
    assert len(calls) == 2 and not out.exists()
    # the staging folder is gone too; the run's checkpoints stay, for train --resume
    assert [p.name for p in tmp_path.iterdir()] == [".bundle.checkpoints"]
    assert cli.main(["--resume", str(out)]) == 0 and out.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_same_seed_same_scores_and_weights(clear_cohort: Path, cache_dir: Path) -> None:
    from training.cache import prepare_cohort

    prepared = prepare_cohort(read_cohort(clear_cohort), TEST_PARAMS, cache_dir)
    x, y = prepared.inputs[:16], prepared.labels[:16]
    groups = [e.patient_id for e in prepared.entries[:16]]
    settings = TrainSettings(epochs=1, folds=2, max_lr=1e-3, bootstrap=0, selection="nested")

    def digest(run) -> str:
        h = hashlib.sha256()
        for r in run.results:
            for key, value in sorted(r.state_dict.items()):
                h.update(key.encode())
                h.update(value.numpy().tobytes())
        return h.hexdigest()

    a, b = run_cv(x, y, groups, settings, seed=3, progress=False), run_cv(x, y, groups, settings, seed=3, progress=False)
    assert np.array_equal(a.oof_scores, b.oof_scores) and digest(a) == digest(b)
    c = run_cv(x, y, groups, settings, seed=4, progress=False)
    assert not np.array_equal(a.oof_scores, c.oof_scores) and digest(a) != digest(c)


def _subset(cohort_csv: Path, out: Path, positives: int, negatives: int) -> Path:
    """A smaller cohort CSV of the same studies (folders made absolute)."""
    with open(cohort_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = [r for r in rows if r["egfr_status"] == "positive"][:positives]
    chosen += [r for r in rows if r["egfr_status"] == "negative"][:negatives]
    for row in chosen:
        row["folder"] = str(cohort_csv.parent / row["folder"])
    with open(out, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(chosen)
    return out


def test_a_12_patient_cohort_trains_with_2_folds_or_says_what_to_change(clear_cohort: Path, tmp_path: Path,
                                                                      cache_dir: Path, capsys) -> None:
    """Issue 15: 12 patients (5 positive), --folds 2: the default trains; nested selection
    adapts its inner split to the 2-3 positives of a training fold; with too few it stops
    with a message that names the count and the fix, not scikit-learn's."""
    small = _subset(clear_cohort, tmp_path / "small.csv", 5, 7)
    common = ["--cohort", str(small), "--cache", str(cache_dir), "--epochs", "1", "--folds", "2", "--output-size", "32",
              "--no-bias-correction", "--no-progress"]
    assert cli.main([*common, "--out", str(tmp_path / "fixed")]) == 0
    assert cli.main([*common, "--out", str(tmp_path / "nested"), "--selection", "nested"]) == 0
    report = json.loads((tmp_path / "nested" / "report.json").read_text())
    assert all(f["selection"]["threshold_rule"] for f in report["folds"])
    capsys.readouterr()
    tiny = _subset(clear_cohort, tmp_path / "tiny.csv", 2, 6)
    assert cli.main([*common[:1], str(tiny), *common[2:], "--out", str(tmp_path / "t"), "--selection", "nested"]) == 1
    message = capsys.readouterr().err
    assert "nested selection needs at least 2 patients of each class" in message and "--selection fixed" in message
    assert "n_splits" not in message and not (tmp_path / "t").exists()


def test_permutations_give_the_real_auc_a_p_value(clear_cohort: Path, tmp_path: Path, cache_dir: Path) -> None:
    """``--permutations N``: N trainings on shuffled labels with the real run's folds and seed;
    p = (1 + permutations at least as high as the real AUC) / (1 + N), in both reports."""
    small = _subset(clear_cohort, tmp_path / "small.csv", 5, 7)
    assert cli.main(["--cohort", str(small), "--cache", str(cache_dir), "--out", str(tmp_path / "b"), "--permutations", "2",
                     *TINY]) == 0
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    p = report["permutations"]
    assert p["permutations"] == 2 and len(p["auc"]) == 2
    at_least = sum(a >= p["real_auc"] for a in p["auc"])
    assert p["p_value"] == pytest.approx((1 + at_least) / 3)
    assert report["metrics_summary"]["permutation_p_value"] == pytest.approx(p["p_value"])
    assert "## Permutation test" in (tmp_path / "b" / "report.md").read_text()
