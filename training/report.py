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
from typing import Any, Sequence, cast

import numpy as np

from pipeline.model.aggregate import SLICE_AGGREGATIONS, aggregate_slices
from pipeline.prep.params import PreprocessParams
from training.cache import PreparedCohort
from training.cohort import Cohort
from training.served import ServedRule
from training.settings import RECIPE_VALUES, TrainSettings

__all__ = ["build_report", "write_report_files", "recipe_text", "selection_text", "deviations_from_paper",
           "NOT_EXTERNAL_VALIDATION", "figure_lines"]

NOT_EXTERNAL_VALIDATION = (
    "K-fold cross-validation on one cohort is internal validation, not external validation: "
    "these figures do not show how the model performs on another centre's scanners, protocols or population."
)
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


def selection_text(settings: TrainSettings, results: Sequence[Any], served: ServedRule) -> str:
    """How the model was selected, from the rules that ran (each fold's record), not from the
    mode's name: the kept epoch, the slice aggregation and the threshold."""
    epoch_rules = sorted({r.selection.get("epoch_rule", "") for r in results})
    epoch = epoch_rules[0] if len(epoch_rules) == 1 else "per fold: " + " / ".join(epoch_rules)
    if settings.selection == "nested":
        aggregation = (f"the best inner-patient AUC in each fold; the bundle serves {served.slice_aggregation}, the one most "
                       "folds chose")
    else:
        aggregation = "median (pre-specified)"
    optimistic = " The test fold chose the kept epoch: optimistic." if settings.selection == "paper" and \
        any(r.selection.get("metric") != "last" for r in results) else ""
    return (f"{settings.selection}: kept epoch: {epoch}; slice aggregation: {aggregation}; threshold: "
            f"{served.threshold_rule}.{optimistic}")


_PAPER_TRAINING = {"freeze_body": "frozen body (fastai's default with pretrained weights)", "max_lr": "max lr 4e-2",
                   "loss": "F1 loss", "mixup": "mixup", "augmentation": "rotation, zoom and contrast",
                   "head": "fastai head", "epochs": "40 epochs", "batch_size": "batch 32", "oversample": "oversampling"}


def deviations_from_paper(settings: TrainSettings, params: PreprocessParams, served: ServedRule) -> list[str]:
    """Where this run differs from Haim et al. 2022 ("Image analysis", "DL analysis"), generated
    from the settings and parameters that ran."""
    paper = RECIPE_VALUES["paper"]
    out = list(params.deviations_from_paper())
    out.append("Initialisation: " + ("ImageNet ResNet-50 weights, as the paper's transfer learning" if settings.pretrained
                                     else "random (no ImageNet weights); the paper fine-tuned an ImageNet ResNet-50") + ".")
    for key, said in _PAPER_TRAINING.items():
        value = getattr(settings, key)
        if value != paper[key]:
            out.append(f"Training: {key} = {value}; the paper recipe: {said}.")
    if settings.freeze_body and not settings.pretrained:
        out.append("Training: a frozen body of RANDOM filters (forced): it does not learn.")
    if settings.folds != 5:
        out.append(f"Folds: {settings.folds}; the paper used five.")
    out.append("Model selection: " + {
        "paper": "as the paper (best accuracy on the validation fold, which is also the test fold)",
        "nested": "epoch, aggregation and threshold chosen on inner patients of each training fold; the paper chose the "
                  "epoch on the test fold",
        "fixed": "nothing chosen on data (last epoch, median, pre-specified threshold); the paper kept the epoch with the "
                 "best accuracy on the test fold"}[settings.selection] + ".")
    out.append("Probability: " + (f"{served.calibration.method} calibration on the out-of-fold patients, threshold "
                                  f"{served.threshold:.3f} on the calibrated scale; the paper thresholded the network's "
                                  "score at 0.5" if served.calibration.applied
                                  else "the network's score, uncalibrated, as the paper") + ".")
    out.append("Fold combination: the node takes the mean of the fold models' patient scores on the logit scale, then "
               "applies the calibration (the paper reported each fold model on its own test fold only).")
    return out


def _served_json(served: ServedRule) -> dict[str, Any]:
    return {
        "slice_aggregation": served.slice_aggregation, "fold_aggregation": "mean",
        "calibration": served.calibration.to_dict(), "calibration_text": served.calibration.describe(),
        "fold_scale": "logit", "ensemble_size": served.ensemble_size,
        "threshold": served.threshold, "threshold_rule": served.threshold_rule,
        "out_of_fold": served.figures, "cross_fitted": served.cross_fitted_figures,
        "statement": SERVED_STATEMENT,
    }


SERVED_STATEMENT = (
    "Each patient is scored by the fold model that never saw it (with --repeats, by the models of every repeat that "
    "never saw it, their logits averaged), under the rule the bundle serves (slice aggregation, calibration, "
    "threshold). The calibration was fitted on these same patients, so its in-sample "
    "calibration is ideal by construction: the cross-fitted figures (each fold's patients calibrated by a map fitted on "
    "the other folds) are the honest estimate. The bundle serves the mean of the fold models, which no patient here was "
    "scored by: `egfr-node evaluate` on patients the bundle never saw measures the ensemble itself."
)
FOLD_STATEMENT = ("Per-fold figures estimate one fold model each, on its own test fold, at its own threshold; they are "
                  "not the figures of the served ensemble.")


def build_report(cohort: Cohort, prepared: PreparedCohort, labels: np.ndarray, runs: Sequence[Any], settings: TrainSettings,
                 params: PreprocessParams, served: ServedRule, code_version: str, started: datetime,
                 permutations: dict[str, Any] | None = None, name: str = "") -> dict[str, Any]:
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
    data: dict[str, Any] = {
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
    f = served.figures
    headline = {
        "rule": "served",
        "slice_aggregation": served.slice_aggregation,
        "auc": f["auc"], "auc_ci95": f["auc_ci"],
        "recall": f["sensitivity"]["value"], "specificity": f["specificity"]["value"], "accuracy": f["accuracy"]["value"],
        # the calibration (and so where the threshold falls on the scores) was fitted on these
        # patients: the cross-fitted figures are the honest estimate of the served threshold's
        "recall_cross_fitted": served.cross_fitted_figures["sensitivity"]["value"],
        "specificity_cross_fitted": served.cross_fitted_figures["specificity"]["value"],
        "threshold": served.threshold,
        "calibration": f["calibration"], "calibration_raw": f["calibration_raw"],
        "calibration_cross_fitted": served.cross_fitted_figures["calibration"],
    }
    deviations = deviations_from_paper(settings, params, served)
    report = {
        "title": "EGFR ResNet-50 fold ensemble: cross-validation report",
        "name": name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started": started.isoformat(timespec="seconds"),
        "code_version": code_version,
        "statement": NOT_EXTERNAL_VALIDATION,
        "selection_mode": settings.selection,
        "selection_text": selection_text(settings, first.results, served),
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
        "preprocessing_text": params.describe(),
        "deviations": deviations,
        "bundle_choice": {"slice_aggregation": served.slice_aggregation, "threshold": served.threshold,
                          "threshold_rule": served.threshold_rule, "fold_aggregation": "mean", "fold_scale": "logit",
                          "calibration": served.calibration.describe()
                          + (f"; fitted on ensembles of {served.ensemble_size} out-of-fold models per patient (the "
                             "repeats)" if 1 < served.ensemble_size and len(first.results) <= served.ensemble_size
                             else "")},
        "headline": headline,
        "served_rule": _served_json(served),
        "as_selected_per_fold": {**first.selected, "statement": FOLD_STATEMENT},
        "permutations": permutations,
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
        "pooled_patient_auc": f["auc"],
        "pooled_patient_auc_ci95": f["auc_ci"],
        "sensitivity": f["sensitivity"]["value"],
        "specificity": f["specificity"]["value"],
        "sensitivity_cross_fitted": served.cross_fitted_figures["sensitivity"]["value"],
        "specificity_cross_fitted": served.cross_fitted_figures["specificity"]["value"],
        "threshold": served.threshold,
        "calibration": f["calibration"],
        "calibration_raw": f["calibration_raw"],
        "calibration_cross_fitted": served.cross_fitted_figures["calibration"],
        "rule": "served rule, out of fold (each patient scored by the fold model that never saw it)",
        "permutation_p_value": (permutations or {}).get("p_value"),
        "table2": table2,
        "repeats": spread,
        "statement": NOT_EXTERNAL_VALIDATION,
    })
    report["training_summary"] = _clean({
        "data": {k: v for k, v in data.items() if k != "failures"} | {"failures": len(data["failures"])},
        "splits": splits,
        "selection_mode": settings.selection,
        "selection_text": report["selection_text"],
        "pretrained": settings.pretrained,
        "initialisation": report["initialisation"],
        "body": report["body"],
        "recipe": settings.recipe,
        "recipe_text": report["recipe_text"],
        "recipe_changes": report["recipe_changes"],
        "settings": settings.to_dict(),
        "preprocessing_text": report["preprocessing_text"],
        "deviations": deviations,
        "code_version": code_version,
        "kept_epochs": [r.epoch for r in first.results],
    })
    cleaned: dict[str, Any] = _clean(report)
    return cleaned


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


def _proportion_text(name: str, figure: dict[str, Any]) -> str:
    k, n = figure["count"]
    return f"{name} {_fmt(figure['value'])} ({_ci(figure['ci95'])}; {k}/{n})"


def figure_lines(f: dict[str, Any], raw_label: str = "before calibration") -> list[str]:
    """A :func:`pipeline.model.performance.performance` result as report lines (train and evaluate)."""
    c = f["confusion"]
    lines = [
        f"- {f['patients']} patients ({f['positives']} EGFR positive, {f['negatives']} negative).",
        f"- ROC AUC {_fmt(f['auc'])} (95 % CI {_ci(f['auc_ci'])}, stratified patient bootstrap).",
        f"- At the threshold {f['threshold']:.3f}: " + ", ".join(_proportion_text(name, f[key]) for name, key in (
            ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("PPV", "ppv"), ("NPV", "npv"),
            ("accuracy", "accuracy"))) + f" (95 % Wilson intervals); TP {c['tp']}, FP {c['fp']}, TN {c['tn']}, FN {c['fn']}.",
    ]
    cal = f["calibration"]
    lines.append(f"- Calibration: slope {_fmt(cal['slope'])}, calibration-in-the-large {_fmt(cal['in_the_large'])}, Brier "
                 f"{_fmt(cal['brier'], 3)}; mean probability {_fmt(cal['mean_predicted'])} against {_fmt(cal['observed'])} "
                 "observed positive (ideal: slope 1, in-the-large 0).")
    if "calibration_raw" in f:
        raw = f["calibration_raw"]
        lines.append(f"- The same patients {raw_label}: slope {_fmt(raw['slope'])}, calibration-in-the-large "
                     f"{_fmt(raw['in_the_large'])}, Brier {_fmt(raw['brier'], 3)}, mean score {_fmt(raw['mean_predicted'])}.")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    d = report["data"]
    lines = [f"# {report['title']}", ""]
    if report.get("name"):
        lines += [f"Bundle name: **{report['name']}**", ""]
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
    lines += ["", "## Preprocessing", ""] + [f"- {line}" for line in report["preprocessing_text"]]
    s = report["settings"]
    b = report["bundle_choice"]
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
        f"- Selection: {report['selection_text']}",
        f"- Calibration: {b['calibration']}.",
        f"- Bundle: slice aggregation {b['slice_aggregation']} per fold model, the folds' logits averaged, then "
        f"calibrated; threshold {b['threshold']:.3f} ({b['threshold_rule']}).",
        f"- Code: {report['code_version']}.",
        "", "## Deviations from Haim et al. 2022", "",
    ] + [f"- {line}" for line in report["deviations"]]
    served = report["served_rule"]
    lines += ["", "## The served rule, out of fold (patient level)", "", served["statement"], ""]
    lines += figure_lines(served["out_of_fold"])
    cross = served["cross_fitted"]
    cc = cross["calibration"]
    lines.append(f"- Cross-fitted calibration (the honest estimate): slope {_fmt(cc['slope'])}, calibration-in-the-large "
                 f"{_fmt(cc['in_the_large'])}, Brier {_fmt(cc['brier'], 3)}; at the threshold: "
                 + ", ".join(_proportion_text(n, cross[k]) for n, k in (("sensitivity", "sensitivity"),
                                                                       ("specificity", "specificity"))) + ".")
    p = report.get("permutations")
    if p:
        lines += ["", "## Permutation test", "",
                  f"- {p['permutations']} trainings on shuffled labels with the same folds and seed: AUC mean "
                  f"{_fmt(p['mean'])}, max {_fmt(p['max'])}; the real AUC {_fmt(p['real_auc'])} (as each permutation's: "
                  "the first run's pooled out-of-fold score, uncalibrated); permutation p = "
                  f"{_fmt(p['p_value'], 3)} ((1 + permutations at least as high) / (1 + permutations))."]
        lines += [f"- Left out (a training fold of the real split held too few of a shuffled class): {why}"
                  for why in p.get("skipped") or ()]
    r = report["repeats"]
    sel = report["as_selected_per_fold"]
    lines += ["", "## As selected per fold", "", sel["statement"], "",
              f"- ROC AUC {_fmt(sel['auc'])} (95 % CI {_ci(sel['auc_ci95'])}) with each fold's own slice aggregation; "
              f"sensitivity {_fmt(sel['recall'])}, specificity {_fmt(sel['specificity'])}, accuracy {_fmt(sel['accuracy'])} "
              "at each fold's own threshold, on the uncalibrated score."]
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
    lines += ["", "Sensitivity, specificity and accuracy are pooled out-of-fold at each fold's threshold on the uncalibrated "
              "score. Per-fold AUCs rest on a few positives each and are very noisy.", "", "## Per fold", "",
              "| fold | test patients (positive) | kept epoch (rule) | aggregation | threshold (rule) | slice AUC | slice accuracy | s | images/s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for fold, row in zip(report["folds"], report["per_fold"]):
        rule = fold["selection"].get("threshold_rule", "")
        lines.append(f"| {fold['fold'] + 1} | {fold['test_patients']} ({fold['test_positive']}) | {fold['kept_epoch']} "
                     f"({fold['selection'].get('metric', '')}) | {fold['slice_aggregation']} | {_fmt(fold['threshold'], 3)} "
                     f"({rule}) | {_fmt(row['slice']['auc'])} | {_fmt(row['slice']['accuracy'])} | {_fmt(fold['seconds'], 1)} | "
                     f"{_fmt(fold['images_per_second'], 1)} |")
    lines += ["", "Files: `folds.csv` (every out-of-fold patient score, raw and under the served rule), `splits.csv`, "
              "`roc.png`, `calibration.png`, `decision.png`, `report.json`.", ""]
    return "\n".join(lines)


def write_report_files(folder: Path, report: dict[str, Any], runs: Sequence[Any], prepared: PreparedCohort,
                       served: ServedRule) -> None:
    folder = Path(folder)
    (folder / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    with open(folder / "splits.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["patient_id", "study_uid", "group", "fold"])
        writer.writeheader()
        writer.writerows(report["splits"])
    s = prepared.inputs.shape[1]
    with open(folder / "folds.csv", "w", newline="") as handle:
        folds_writer = csv.writer(handle)
        folds_writer.writerow(["repeat", "seed", "fold", "patient_id", "study_uid", "label"] + [f"slice{i}" for i in range(s)]
                              + list(SLICE_AGGREGATIONS) + ["selected_aggregation", "selected_score", "threshold",
                                                            "predicted_positive", "served_score", "served_probability",
                                                            "served_probability_cross_fitted", "served_positive"])
        for repeat, run in enumerate(runs):
            selected = run.selected_scores
            for i, entry in enumerate(prepared.entries):
                scores = run.oof_scores[i]
                row = ([repeat, run.seed, int(run.folds[i]), entry.patient_id, entry.study_uid, int(run.labels[i])]
                       + [f"{v:.6f}" for v in scores]
                       + [f"{float(aggregate_slices(scores, how)):.6f}" for how in SLICE_AGGREGATIONS]
                       + [run.oof_aggregation[i], f"{selected[i]:.6f}", f"{run.oof_threshold[i]:.6f}",
                          int(selected[i] >= run.oof_threshold[i])])
                if repeat == 0:  # the served rule is fixed on the first repeat (the bundle's)
                    row += [f"{served.raw[i]:.6f}", f"{served.probabilities[i]:.6f}", f"{served.cross_fitted[i]:.6f}",
                            int(served.probabilities[i] >= served.threshold)]
                folds_writer.writerow(row)
    _plots(folder, runs[0], served, min(1000, report["settings"]["bootstrap"]))


def _plots(folder: Path, run: Any, served: ServedRule, resamples: int) -> None:
    from pipeline.model.performance import reliability_curve, roc_band
    from pipeline.model.plots import decision_curve_figure, reliability_figure, roc_figure, save_png

    y = run.labels
    f = served.figures
    curves: list[tuple[str, Sequence[int], Sequence[float]]] = [
        (f"served rule, out of fold (AUC {_fmt(f['auc'])})", y, cast("Sequence[float]", served.probabilities))]
    curves += [(f"fold {r.fold + 1}", y[r.test_index],
                cast("Sequence[float]", aggregate_slices(r.test_scores, r.slice_aggregation))) for r in run.results]
    save_png(roc_figure(curves, roc_band(y, served.probabilities, resamples, run.seed)), folder / "roc.png")
    cal, raw = f["calibration"], f["calibration_raw"]
    title = (f"Out of fold: slope {_fmt(raw['slope'])} -> {_fmt(cal['slope'])} (in-sample), cross-fitted "
             f"{_fmt(served.cross_fitted_figures['calibration']['slope'])}")
    save_png(reliability_figure({"score (uncalibrated)": f["reliability_raw"], "calibrated (in-sample)": f["reliability"],
                                 "calibrated (cross-fitted)": reliability_curve(y, served.cross_fitted)}, title),
             folder / "calibration.png")
    save_png(decision_curve_figure(f["net_benefit"], "Decision curve, out of fold (calibrated)"), folder / "decision.png")

