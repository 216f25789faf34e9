"""The evaluation report: ``report.md``, ``report.json``, ``roc.png``, ``calibration.png``,
``folds.csv`` (every out-of-fold patient score) and ``splits.csv`` (the fold assignment).

What reviewers ask for (TRIPOD+AI, CLAIM; ../shared/METHOD.md "Evaluation"): the cohort
size and class balance, studies that failed and why, the partition level (patient), the
preprocessing and training settings, whether ImageNet weights were used, how the final model
was selected, per-fold and pooled metrics with intervals, calibration, the spread over
repeats, and that K-fold cross-validation on one cohort is not external validation.
"""

from __future__ import annotations

import csv
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.model.aggregate import SLICE_AGGREGATIONS, aggregate_slices
from pipeline.prep.params import PreprocessParams
from training.cache import PreparedCohort
from training.cohort import Cohort
from training.settings import RECIPE_VALUES, TrainSettings

__all__ = ["build_report", "write_report_files", "recipe_text", "NOT_EXTERNAL_VALIDATION"]

NOT_EXTERNAL_VALIDATION = (
    "K-fold cross-validation on one cohort is internal validation, not external validation: "
    "these figures do not show how the model performs on another centre's scanners, protocols or population."
)
_SELECTION_TEXT = {
    "fixed": "fixed: nothing chosen on data - every training patient trains, the last epoch is kept, median of "
             "slices, the pre-specified threshold; the test fold was used only to score the model",
    "nested": "nested: epoch, slice aggregation and threshold chosen on an inner split of each training fold; "
              "the test fold was used only to score the kept model",
    "paper": "paper: the epoch with the best accuracy on the test fold itself (as Haim et al. 2022), median, threshold "
             "0.5 - optimistic, the test fold chose the model",
}


def _recipe_summary(name: str) -> str:
    v = RECIPE_VALUES[name]
    body = "frozen pretrained body" if v["freeze_body"] else "every layer trains"
    loss = {"f1": "soft-F1", "ce": "cross-entropy"}[v["loss"]]
    augmentation = {"fastai": "rotation/zoom/lighting", "dihedral": "quarter turns and mirroring", "none": "no augmentation"}
    return (f"{body}, max lr {v['max_lr']:g}, {loss}, mixup {'on' if v['mixup'] else 'off'}, "
            f"{augmentation[v['augmentation']]}, {v['head']} head, {v['selection']} selection")


_RECIPE_TEXT = {
    "paper": "the paper's (Haim et al. 2022 read through fastai: " + _recipe_summary("paper") + ")",
    "scratch": "from scratch (" + _recipe_summary("scratch") + "; docs/examples/ablation.md shows why)",
}


def recipe_text(settings: TrainSettings) -> str:
    """Which recipe, why it was used, and what was changed from it (the report's Method)."""
    automatic = (settings.recipe == "paper") == settings.pretrained
    why = ("chosen automatically: " + ("ImageNet weights were given" if settings.pretrained else "no ImageNet weights were given")
           if automatic else "asked for (not the automatic choice)")
    changes = settings.recipe_changes()
    changed = ", ".join(f"{k}={v}" for k, v in sorted(changes.items())) if changes else "none"
    forced = ("; the frozen body has RANDOM weights (forced with allow_random_frozen_body: it does not learn)"
              if settings.freeze_body and not settings.pretrained else "")
    return f"{settings.recipe} - {_RECIPE_TEXT[settings.recipe]}; {why}; values changed from the recipe: {changed}{forced}"


def _clean(value: Any) -> Any:
    """JSON-safe: NaN -> None, numpy -> python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if not math.isfinite(float(value)) else round(float(value), 6)
    return value


def build_report(cohort: Cohort, prepared: PreparedCohort, labels: np.ndarray, runs: Sequence[Any], settings: TrainSettings,
                 params: PreprocessParams, slice_aggregation: str, threshold: float, code_version: str,
                 started: datetime) -> dict[str, Any]:
    first = runs[0]
    positives = int(labels.sum())
    pooled_aucs = [r.selected["auc"] for r in runs]
    finite = [a for a in pooled_aucs if a is not None and math.isfinite(a)]
    spread = {
        "seeds": [r.seed for r in runs],
        "pooled_auc": pooled_aucs,
        "mean": float(np.mean(finite)) if finite else None,
        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
        "min": min(finite) if finite else None,
        "max": max(finite) if finite else None,
    }
    per_fold_auc = {how: [row["patient"][how]["auc"] for row in first.per_fold] for how in SLICE_AGGREGATIONS}
    table2 = {}
    for how in SLICE_AGGREGATIONS:
        values = [v for v in per_fold_auc[how] if math.isfinite(v)]
        pooled = first.pooled[how]
        table2[how] = {
            "fold_auc": per_fold_auc[how],
            "mean": float(np.mean(values)) if values else None,
            "sd": float(np.std(values)) if values else None,
            "pooled_auc": pooled["auc"],
            "pooled_auc_ci95": pooled["auc_ci95"],
            "sensitivity": pooled["recall"],
            "specificity": pooled["specificity"],
            "accuracy": pooled["accuracy"],
        }
    data = {
        "cohort_csv": str(cohort.source),
        "patients_listed": len(cohort),
        "patients_used": int(len(labels)),
        "positive": positives,
        "negative": int(len(labels) - positives),
        "positive_fraction": positives / len(labels) if len(labels) else None,
        "slices_per_patient": int(prepared.inputs.shape[1]),
        "failures": [f.__dict__ for f in prepared.failures],
        "from_cache": prepared.cached,
        "preprocessed": prepared.computed,
        "labels_shuffled": settings.shuffle_labels,
    }
    splits = [{"patient_id": e.patient_id, "study_uid": e.study_uid, "group": e.group or e.patient_id, "fold": int(f)}
              for e, f in zip(prepared.entries, first.folds)]
    headline = {
        "slice_aggregation": "per fold (nested)" if settings.selection == "nested" else "median",
        **first.selected,
    }
    report = {
        "title": "EGFR ResNet-50 fold ensemble: cross-validation report",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started": started.isoformat(timespec="seconds"),
        "code_version": code_version,
        "statement": NOT_EXTERNAL_VALIDATION,
        "selection_mode": settings.selection,
        "selection_text": _SELECTION_TEXT[settings.selection],
        "pretrained": settings.pretrained,
        "initialisation": ("ImageNet weights from " + str(settings.imagenet_weights)) if settings.pretrained
        else "trained from scratch (no ImageNet weights): not the paper's transfer learning",
        "body": "frozen (head + BatchNorm train)" if settings.freeze_body else "full fine-tuning",
        "recipe": settings.recipe,
        "recipe_text": recipe_text(settings),
        "recipe_changes": settings.recipe_changes(),
        "head": settings.head,
        "device": settings.device,
        "throughput": {
            "folds": "trained together, in turns" if settings.folds_together else "trained one after another",
            "cv_seconds": round(first.seconds, 2),
            "training_images": int(sum(r.train_images for r in first.results)),
            "images_per_second": round(sum(r.train_images for r in first.results) / first.seconds, 2) if first.seconds else None,
        },
        "data": data,
        "settings": settings.to_dict(),
        "preprocessing": params.to_dict(),
        "bundle_choice": {"slice_aggregation": slice_aggregation, "threshold": threshold, "fold_aggregation": "mean"},
        "headline": headline,
        "table2": table2,
        "per_fold": first.per_fold,
        "pooled": first.pooled,
        "folds": [{"fold": r.fold, "kept_epoch": r.epoch, "slice_aggregation": r.slice_aggregation, "threshold": r.threshold,
                   "selection": r.selection, "history": r.history, "seconds": round(r.seconds, 2),
                   "images_per_second": round(r.train_images / r.seconds, 2) if r.seconds else None,
                   "test_patients": int(len(r.test_index)), "test_positive": int(labels[r.test_index].sum())}
                  for r in first.results],
        "repeats": spread,
        "splits": splits,
    }
    report["metrics_summary"] = _clean({
        "pooled_patient_auc": first.selected["auc"],
        "pooled_patient_auc_ci95": first.selected["auc_ci95"],
        "sensitivity": first.selected["recall"],
        "specificity": first.selected["specificity"],
        "calibration": first.selected["calibration"],
        "table2": table2,
        "repeats": spread,
        "statement": NOT_EXTERNAL_VALIDATION,
    })
    report["training_summary"] = _clean({
        "data": {k: v for k, v in data.items() if k != "failures"} | {"failures": len(data["failures"])},
        "splits": splits,
        "selection_mode": settings.selection,
        "pretrained": settings.pretrained,
        "initialisation": report["initialisation"],
        "body": report["body"],
        "recipe": settings.recipe,
        "recipe_text": report["recipe_text"],
        "recipe_changes": report["recipe_changes"],
        "settings": settings.to_dict(),
        "code_version": code_version,
        "kept_epochs": [r.epoch for r in first.results],
    })
    return _clean(report)


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _ci(pair: Any) -> str:
    if not pair or pair[0] is None:
        return "n/a"
    return f"{pair[0]:.2f}-{pair[1]:.2f}"


_HEAD_TEXT = {"fastai": "fastai head (concat pooling, BatchNorm, dropout, 2 Linear)",
              "linear": "linear head (average pooling, 1 Linear)"}


def _augmentation_text(s: dict[str, Any]) -> str:
    if s["augmentation"] == "dihedral":
        return "a random quarter turn and mirror per image"
    if s["augmentation"] == "none":
        return "none"
    return (f"rotation +-{s['rotate_degrees']:g} deg, zoom <= {s['zoom_max']:g} (p {s['affine_p']:g}), lighting "
            f"{s['lighting']:g} (p {s['lighting_p']:g}), flip p {s['flip_p']:g}")


def render_markdown(report: dict[str, Any]) -> str:
    d, h = report["data"], report["headline"]
    lines = [f"# {report['title']}", ""]
    if d["labels_shuffled"]:
        lines += ["**SHUFFLED-LABEL CONTROL: the labels were permuted; the AUC should be near 0.5. Not a model to use.**", ""]
    lines += [
        f"> {report['statement']}", "",
        "## Cohort",
        f"- {d['patients_listed']} patients listed in `{Path(d['cohort_csv']).name}`, {d['patients_used']} used: "
        f"{d['positive']} EGFR positive, {d['negative']} negative ({_fmt(100 * (d['positive_fraction'] or 0), 1)} % positive); "
        f"{d['slices_per_patient']} slices each.",
        f"- Preprocessed this run: {d['preprocessed']}; from the cache: {d['from_cache']}.",
    ]
    if d["failures"]:
        lines.append(f"- {len(d['failures'])} studies failed and are not in the analysis:")
        lines += [f"  - {f['study_uid']}: {f['reason']}" for f in d["failures"]]
    else:
        lines.append("- No study failed preprocessing.")
    s = report["settings"]
    lines += [
        "", "## Method",
        f"- Recipe: {report['recipe_text']}.",
        f"- Model: ResNet-50 + {_HEAD_TEXT[report['head']]}, {report['initialisation']}; body: {report['body']}.",
        f"- Training: {s['epochs']} epochs, batch {s['batch_size']}, one-cycle max lr {s['max_lr']:g}, loss {s['loss']}, "
        f"mixup {'Beta(%g,%g)' % (s['mixup_alpha'], s['mixup_alpha']) if s['mixup'] else 'off'}, "
        f"oversampling {'on' if s['oversample'] else 'off'}, augmentation {_augmentation_text(s)}, device {report['device']}.",
        f"- Time: the {s['folds']} folds {report['throughput']['folds']}; cross-validation "
        f"{_fmt(report['throughput']['cv_seconds'], 1)} s, {report['throughput']['training_images']} training images, "
        f"{_fmt(report['throughput']['images_per_second'], 1)} images/s (each fold's own time is in the per-fold table).",
        f"- Splits: stratified group {s['folds']}-fold at patient level (seed {s['seed']}), patient-disjoint (checked); "
        "assignment in `splits.csv`.",
        f"- Selection mode: {report['selection_text']}.",
        f"- Bundle: slice aggregation {report['bundle_choice']['slice_aggregation']}, folds by mean, threshold "
        f"{report['bundle_choice']['threshold']:.3f}.",
        f"- Code: {report['code_version']}.",
        "", "## Result (pooled out-of-fold, patient level)",
        f"- ROC AUC {_fmt(h['auc'])} (95 % CI {_ci(h['auc_ci95'])}, stratified patient bootstrap) with "
        f"{h['slice_aggregation']} slice aggregation.",
        f"- Sensitivity {_fmt(h['recall'])}, specificity {_fmt(h['specificity'])}, accuracy {_fmt(h['accuracy'])} at each "
        "fold's threshold.",
        f"- Calibration: slope {_fmt(h['calibration']['slope'])}, intercept {_fmt(h['calibration']['intercept'])}, "
        f"Brier {_fmt(h['calibration']['brier'], 3)}.",
    ]
    r = report["repeats"]
    if len(r["seeds"]) > 1:
        lines.append(f"- Over {len(r['seeds'])} repeats (seeds {', '.join(map(str, r['seeds']))}): pooled AUC mean "
                     f"{_fmt(r['mean'])}, SD {_fmt(r['sd'])}, range {_fmt(r['min'])}-{_fmt(r['max'])}.")
    k = len(report["per_fold"])
    lines += ["", "## Table 2 (as Haim et al. 2022): ROC AUC per fold and pooled", "",
              "| slice aggregation | " + " | ".join(f"fold {i + 1}" for i in range(k))
              + " | mean | SD | pooled AUC (95 % CI) | sensitivity | specificity | accuracy |",
              "| --- " * (k + 7) + "|"]
    for how, row in report["table2"].items():
        lines.append(f"| {how} | " + " | ".join(_fmt(v) for v in row["fold_auc"]) + f" | {_fmt(row['mean'])} | {_fmt(row['sd'])} | "
                     f"{_fmt(row['pooled_auc'])} ({_ci(row['pooled_auc_ci95'])}) | {_fmt(row['sensitivity'])} | "
                     f"{_fmt(row['specificity'])} | {_fmt(row['accuracy'])} |")
    lines += ["", "Sensitivity, specificity and accuracy are pooled out-of-fold at each fold's threshold. Per-fold AUCs "
              "rest on a few positives each and are very noisy.", "", "## Per fold", "",
              "| fold | test patients (positive) | kept epoch | aggregation | threshold (rule) | slice AUC | slice accuracy | s | images/s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for fold, row in zip(report["folds"], report["per_fold"]):
        rule = fold["selection"].get("threshold_rule", "")
        lines.append(f"| {fold['fold'] + 1} | {fold['test_patients']} ({fold['test_positive']}) | {fold['kept_epoch']} | "
                     f"{fold['slice_aggregation']} | {_fmt(fold['threshold'], 3)} ({rule}) | {_fmt(row['slice']['auc'])} | "
                     f"{_fmt(row['slice']['accuracy'])} | {_fmt(fold['seconds'], 1)} | {_fmt(fold['images_per_second'], 1)} |")
    lines += ["", "Files: `folds.csv` (every out-of-fold patient score), `splits.csv`, `roc.png`, `calibration.png`, "
              "`report.json`.", ""]
    return "\n".join(lines)


def write_report_files(folder: Path, report: dict[str, Any], runs: Sequence[Any], prepared: PreparedCohort) -> None:
    folder = Path(folder)
    (folder / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    with open(folder / "splits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient_id", "study_uid", "group", "fold"])
        writer.writeheader()
        writer.writerows(report["splits"])
    s = prepared.inputs.shape[1]
    with open(folder / "folds.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["repeat", "seed", "fold", "patient_id", "study_uid", "label"] + [f"slice{i}" for i in range(s)]
                        + list(SLICE_AGGREGATIONS) + ["selected_aggregation", "selected_score", "threshold", "predicted_positive"])
        for repeat, run in enumerate(runs):
            selected = run.selected_scores
            for i, entry in enumerate(prepared.entries):
                scores = run.oof_scores[i]
                writer.writerow([repeat, run.seed, int(run.folds[i]), entry.patient_id, entry.study_uid, int(run.labels[i])]
                                + [f"{v:.6f}" for v in scores]
                                + [f"{float(aggregate_slices(scores, how)):.6f}" for how in SLICE_AGGREGATIONS]
                                + [run.oof_aggregation[i], f"{selected[i]:.6f}", f"{run.oof_threshold[i]:.6f}",
                                   int(selected[i] >= run.oof_threshold[i])])
    _plots(folder, runs[0])


def _plots(folder: Path, run: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    y = run.labels
    fig, ax = plt.subplots(figsize=(5, 5))
    for result in run.results:
        yt = y[result.test_index]
        if len(set(yt.tolist())) < 2:
            continue
        fpr, tpr, _ = roc_curve(yt, aggregate_slices(result.test_scores, result.slice_aggregation))
        ax.plot(fpr, tpr, alpha=0.5, lw=1, label=f"fold {result.fold + 1}")
    selected = run.selected_scores
    if len(set(y.tolist())) == 2:
        fpr, tpr, _ = roc_curve(y, selected)
        ax.plot(fpr, tpr, color="black", lw=2, label=f"pooled out-of-fold (AUC {run.selected['auc']:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC, patient level", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "roc.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    bins = np.linspace(0, 1, 6)
    which = np.clip(np.digitize(selected, bins) - 1, 0, len(bins) - 2)
    xs, ys, ns = [], [], []
    for b in range(len(bins) - 1):
        members = which == b
        if members.any():
            xs.append(selected[members].mean())
            ys.append(y[members].mean())
            ns.append(int(members.sum()))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="ideal")
    ax.plot(xs, ys, marker="o", color="black", label="out-of-fold patients (5 bins)")
    for xv, yv, nv in zip(xs, ys, ns):
        ax.annotate(str(nv), (xv, yv), textcoords="offset points", xytext=(4, 4), fontsize=7)
    cal = run.selected["calibration"]
    ax.set(xlabel="predicted probability", ylabel="observed fraction positive", xlim=(0, 1), ylim=(0, 1),
           title=f"Calibration: slope {_fmt(cal['slope'])}, intercept {_fmt(cal['intercept'])}, Brier {_fmt(cal['brier'], 3)}")
    ax.title.set_fontsize(9)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "calibration.png", dpi=100)
    plt.close(fig)
