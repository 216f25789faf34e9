"""Cross-validation and the whole training run: cohort -> prepared inputs -> K folds ->
metrics -> bundle + report. The CLI (:mod:`training.cli`) and the node's ``demo`` call
:func:`train_bundle`.

Selection modes (issue 7, "Model selection, honestly"; issue 15):

- ``fixed`` (the scratch recipe's): nothing is chosen on data: every training patient
  trains, the last epoch is kept, median of slices, the pre-specified threshold.
- ``nested`` (the paper recipe's): inside each outer training fold an inner split
  (``inner_folds``) holds out patients; the kept epoch, the slice aggregation and the
  decision threshold are chosen on them only; the outer test fold is touched once.
- ``paper``: the epoch with the best accuracy on the outer test fold itself (the paper's
  "preserving the model which achieved the best level of accuracy"), median, 0.5:
  optimistic, kept for comparison.

The bundle holds the K fold models of the first repeat; ``--repeats`` re-runs the whole CV
with seeds seed+1, ... and reports the spread. The rule the bundle serves (slice aggregation,
calibration, threshold) is fixed and measured out of fold by :mod:`training.served`;
``permutations`` reruns the CV on shuffled labels for the permutation p-value of the AUC.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pipeline.model.aggregate import SLICE_AGGREGATIONS, aggregate_slices
from pipeline.model.bundle import FoldFile, Manifest, new_device_uid
from pipeline.model.performance import auc, auc_ci, calibration_figures
from pipeline.model.network import architecture_of
from pipeline.prep.params import PreprocessParams
from training import distributed
from training.cache import PreparedCohort, prepare_cohort
from training.cohort import Cohort, read_cohort, with_received_files
from training.engine import FoldResult, FoldTrainer, resolve_device, train_fold, train_folds_together
from training.export import write_bundle
from training.metrics import binary_metrics, fold_table, pooled_metrics
from training.served import ServedRule, fit_served_rule
from training.settings import TrainSettings
from training.splits import SplitError, assign_folds, inner_split

__all__ = ["CVRun", "TrainOutcome", "run_cv", "train_bundle", "default_bundle_name", "permutation_test", "code_version",
           "TrainingError"]

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on (too few usable studies, one class only); one line."""


@dataclass
class CVRun:
    """One complete K-fold cross-validation."""

    seed: int
    folds: np.ndarray  # test fold of every patient
    results: list[FoldResult]
    labels: np.ndarray
    oof_scores: np.ndarray  # [N, S]
    oof_threshold: np.ndarray  # [N], the threshold of the fold that scored the patient
    oof_aggregation: list[str]  # [N], that fold's slice aggregation
    per_fold: list[dict[str, Any]] = field(default_factory=list)
    pooled: dict[str, Any] = field(default_factory=dict)
    selected: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def selected_scores(self) -> np.ndarray:
        """Each patient's score with its fold's chosen slice aggregation."""
        return np.array([float(aggregate_slices(s, how)) for s, how in zip(self.oof_scores, self.oof_aggregation)])


def run_cv(inputs: np.ndarray, labels: np.ndarray, groups: list[str], settings: TrainSettings, seed: int,
           progress: bool = True, folds: np.ndarray | None = None, checkpoints: Path | None = None,
           label: str = "") -> CVRun:
    """K-fold CV on prepared inputs ``[N, S, C, H, W]``; every patient scored out of fold
    (``folds``: a given assignment, as the permutation runs reuse the real one's).
    ``checkpoints``: a folder where each fold's state is saved after every epoch as
    ``<label>-fold<k>.pt`` (default label ``seed<seed>``) and resumed from when there (one
    process only: not under torchrun)."""
    start = time.perf_counter()
    device = resolve_device(settings.device)
    folds = assign_folds(labels, groups, settings.folds, seed) if folds is None else np.asarray(folds)
    x = torch.as_tensor(inputs, dtype=torch.float32, device=device)
    n, s = inputs.shape[:2]
    oof = np.full((n, s), np.nan)
    threshold = np.full(n, np.nan)
    aggregation = [""] * n
    plan = []
    for k in range(settings.folds):
        test = np.where(folds == k)[0]
        train = np.where(folds != k)[0]
        if settings.selection == "nested":
            fit, select = inner_split(train, labels, groups, settings.inner_folds, seed + 7919 * (k + 1))
        elif settings.selection == "fixed":
            fit, select = train, np.zeros(0, dtype=int)  # nothing is chosen on data
        else:
            fit, select = train, test
        plan.append((k, fit, select, test))

    def checkpoint(k: int) -> Path | None:
        if checkpoints is None or distributed.world_size() > 1:
            return None
        checkpoints.mkdir(parents=True, exist_ok=True)
        return checkpoints / f"{label or f'seed{seed}'}-fold{k}.pt"

    if settings.folds_together and distributed.world_size() == 1:
        trainers = [FoldTrainer(k, x, labels, fit, select, test, settings, seed=seed * 1000 + k, device=device,
                                progress=progress, position=k + 1, checkpoint=checkpoint(k)) for k, fit, select, test in plan]
        results = train_folds_together(trainers)
    else:
        bar = tqdm(plan, desc=f"CV seed {seed}", unit="fold", position=0, disable=not progress)
        results = [train_fold(k, x, labels, fit, select, test, settings, seed=seed * 1000 + k, device=device,
                              progress=progress, checkpoint=checkpoint(k)) for k, fit, select, test in bar]
        bar.close()
    for result in results:
        oof[result.test_index] = result.test_scores
        threshold[result.test_index] = result.threshold
        for i in result.test_index:
            aggregation[i] = result.slice_aggregation
    if np.isnan(oof).any():
        raise TrainingError("a patient was not scored out of fold (fold assignment bug)")
    # each fold's threshold on each aggregation's own scale (nested selection places one per
    # aggregation that separates its inner patients; else the pre-specified one)
    per_fold_cut = [{how: t if (t := r.youden_threshold(how)) is not None else settings.threshold
                     for how in SLICE_AGGREGATIONS} for r in results]
    cut_by_aggregation = {how: np.array(threshold) for how in SLICE_AGGREGATIONS}
    for result, cuts in zip(results, per_fold_cut):
        for how in SLICE_AGGREGATIONS:
            cut_by_aggregation[how][result.test_index] = cuts[how]
    run = CVRun(seed, folds, results, labels, oof, threshold, aggregation)
    run.per_fold = fold_table(
        [{"fold": r.fold, "labels": labels[r.test_index], "scores": r.test_scores} for r in results],
        [r.threshold for r in results], per_fold_cut,
    )
    run.pooled = pooled_metrics(labels, oof, threshold, settings.bootstrap, seed, cut_by_aggregation)

    selected = run.selected_scores
    run.selected = {
        **binary_metrics(labels, selected, threshold),
        "auc_ci95": list(auc_ci(labels, selected, settings.bootstrap, seed)),
        "calibration": calibration_figures(labels, selected),
        "aggregations": dict(Counter(aggregation)),
    }
    run.seconds = time.perf_counter() - start
    return run


def default_bundle_name(settings: TrainSettings) -> str:
    """The bundle's name from the recipe that ran (the SR's Algorithm Name and Device Observer
    Name): only a paper-recipe bundle on ImageNet weights is called the Haim 2022 recipe."""
    if settings.recipe == "paper":
        recipe = "Haim 2022 recipe" if settings.pretrained else "Haim 2022 recipe, no ImageNet weights"
    else:
        recipe = "scratch recipe, not Haim 2022"
    return f"EGFR ResNet-50 ({recipe})"


def permutation_test(inputs: np.ndarray, labels: np.ndarray, groups: list[str], settings: TrainSettings, real: CVRun,
                     progress: bool = True, checkpoints: Path | None = None) -> dict[str, Any]:
    """``settings.permutations`` trainings on shuffled labels, with the real run's folds and seed:
    the permutation p-value of the real AUC, (1 + #{AUC_perm >= AUC}) / (1 + N). Both AUCs are
    computed alike: one run's pooled out-of-fold score under the bundle's aggregation,
    uncalibrated (an ensemble of repeats, or an isotonic map's ties, would make them differ)."""
    real_auc = auc(labels, fit_served_rule([real], settings.replace(bootstrap=0), real.seed).raw)
    aucs, skipped = [], []
    for i in range(settings.permutations):
        permuted = np.random.default_rng([settings.seed, 0x9E57, i]).permutation(labels)
        try:
            run = run_cv(inputs, permuted, groups, settings, real.seed, progress, folds=real.folds,
                         checkpoints=checkpoints, label=f"permutation{i}")
        except SplitError as exc:
            # the real folds were stratified on the real labels: a permutation can leave a training
            # fold too few of a class to split; that permutation is left out, the real run stands
            skipped.append(f"permutation {i + 1}: {exc}")
            continue
        aucs.append(auc(permuted, fit_served_rule([run], settings.replace(bootstrap=0), real.seed).raw))
    finite = [a for a in aucs if np.isfinite(a)]
    at_least = sum(a >= real_auc for a in finite)
    return {"permutations": len(aucs), "skipped": skipped, "real_auc": real_auc, "auc": aucs,
            "p_value": (1 + at_least) / (1 + len(finite)) if finite else None,
            "mean": float(np.mean(finite)) if finite else None,
            "max": float(np.max(finite)) if finite else None}


def code_version() -> str:
    try:
        from importlib.metadata import version

        package = version("egfr-node")
    except Exception:  # not installed as a distribution
        package = "unknown"
    root = Path(__file__).resolve().parents[1]  # the pathspecs below are relative to it
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=root).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "training", "pipeline"], capture_output=True, text=True,
                               timeout=5, cwd=root).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"egfr-node {package}" + (f" git {commit}{'+dirty' if dirty else ''}" if commit else "")


@dataclass
class TrainOutcome:
    bundle: Path
    manifest: Manifest | None  # None on the ranks other than 0 under torchrun (they write nothing)
    report: dict[str, Any]
    runs: list[CVRun]
    prepared: PreparedCohort
    served: ServedRule | None = None


def train_bundle(
    cohort_csv: Path | Cohort,
    out_dir: Path,
    *,
    settings: TrainSettings | None = None,
    params: PreprocessParams | None = None,
    archive_root: Path | None = None,
    database_url: str | None = None,
    cache_dir: Path | None = None,
    name: str | None = None,
    version: str | None = None,
    progress: bool = True,
    provenance: dict[str, Any] | None = None,
    checkpoints: Path | None = None,
) -> TrainOutcome:
    """Read the cohort, prepare every study (cached), run the CV (``settings.repeats`` times),
    write the bundle with its report to ``out_dir`` atomically, and return what was written.

    ``cohort_csv`` may be a :class:`training.cohort.Cohort` already built (from the node's
    outcomes; ``provenance`` then says which, recorded in the bundle).
    ``cache_dir`` defaults to ``<out_dir's parent>/.egfr-train-cache``. With the node's
    ``database_url`` (and ``archive_root``) each archived study is read as the node's jobs read
    it: its received instances only (:func:`training.cohort.with_received_files`).
    ``checkpoints``: the folder each fold's state is saved in after every epoch, and resumed
    from (``train --resume``)."""
    from training.report import build_report, write_report_files

    settings = settings or TrainSettings()
    params = params or PreprocessParams()
    started = datetime.now(timezone.utc)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise TrainingError(f"{out_dir} already exists; choose a new folder for the bundle")
    cohort = read_cohort(cohort_csv, archive_root)
    if database_url and archive_root is not None:
        cohort = with_received_files(cohort, database_url, archive_root)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir.absolute().parent / ".egfr-train-cache"
    if not distributed.is_main():
        distributed.barrier()  # under torchrun rank 0 preprocesses; the others read its cache
    bar = tqdm(total=len(cohort), desc="preprocess", unit="study", disable=not (progress and distributed.is_main()))
    prepared = prepare_cohort(cohort, params, cache_dir, progress=lambda done, total: bar.update(1))
    bar.close()
    if distributed.is_main():
        distributed.barrier()
    labels = prepared.labels.copy()
    if settings.shuffle_labels:
        labels = np.random.default_rng([settings.seed, 0x5EED]).permutation(labels)
    positives = int(labels.sum())
    if len(labels) < 2 * settings.folds or positives < 1 or positives == len(labels):
        reasons = "; ".join(f"{f.study_uid}: {f.reason}" for f in prepared.failures[:5])
        raise TrainingError(f"{len(labels)} usable studies ({positives} positive) cannot be split into {settings.folds} folds"
                            + (f"; failures: {reasons}" if reasons else ""))
    groups = [e.group or e.patient_id for e in prepared.entries]
    # CPU results depend on the thread count (oneDNN's reduction order): fix it for the run so
    # the same cohort and seed give the same scores whatever the calling process set before.
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(settings.threads or max(1, (os.cpu_count() or 1) // distributed.world_size()))
    if settings.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what CUDA's deterministic GEMMs need
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    try:
        runs = [run_cv(prepared.inputs, labels, groups, settings, settings.seed + r, progress, checkpoints=checkpoints)
                for r in range(settings.repeats)]
        first = runs[0]
        served = fit_served_rule(runs, settings, first.seed)
        permutations = permutation_test(prepared.inputs, labels, groups, settings, first, progress,
                                        checkpoints=checkpoints) if settings.permutations else None
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)
    name = name or default_bundle_name(settings)
    report = build_report(cohort, prepared, labels, runs, settings, params, served, code_version(), started,
                          permutations=permutations, name=name)
    report["training_summary"]["processes"] = distributed.world_size()  # > 1: data-parallel under torchrun
    if provenance is not None:
        report["cohort_provenance"] = report["training_summary"]["cohort_provenance"] = provenance
    normalization = "imagenet" if settings.pretrained else "none"
    version = version or started.strftime("%Y%m%d%H%M%S")

    def make_manifest(files: tuple[FoldFile, ...]) -> Manifest:
        return Manifest(
            name=name + (" [SHUFFLED-LABEL CONTROL]" if settings.shuffle_labels else ""),
            version=version,
            device_uid=new_device_uid(),
            preprocessing=params,
            input_shape=(params.slice_count, params.channels, params.output_size),
            folds=files,
            architecture=architecture_of(settings.head),
            normalization=normalization,
            slice_aggregation=served.slice_aggregation,
            fold_aggregation="mean",
            threshold=served.threshold,
            threshold_rule=served.threshold_rule,
            calibration=served.calibration.to_dict(),
            fold_scale="logit",
            metrics=report["metrics_summary"],
            training=report["training_summary"],
        )

    if not distributed.is_main():  # under torchrun only rank 0 writes the bundle (same weights on every rank)
        return TrainOutcome(out_dir, None, report, runs, prepared, served)
    manifest = write_bundle(out_dir, [r.state_dict for r in first.results], make_manifest,
                            lambda folder: write_report_files(folder, report, runs, prepared, served))
    return TrainOutcome(out_dir, manifest, report, runs, prepared, served)
