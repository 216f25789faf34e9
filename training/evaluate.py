"""``egfr-node evaluate``: a frozen bundle scored exactly as the node serves it, on a labelled
cohort (issue 27, item 1).

Each study goes through the node's own preprocessing with the bundle's parameters
(:func:`pipeline.prepare.prepare_study`, cached like training's), then through the bundle's
:class:`pipeline.model.infer.FoldEnsemble` one study at a time, as a job does: the K fold
models on the study's slices, slice aggregation per fold, the folds' mean on the bundle's
scale (their logits, for a bundle trained now), the calibration, the threshold
(:func:`pipeline.model.aggregate.served_probability`). The probability of
a case is the one the node's SR gives for the same study.

Written to the output folder (atomically, like a bundle): ``report.md``, ``report.json``
(top-level ``auc`` and ``auc_ci``), ``cases.csv`` (one row per patient: probability, status,
label, the folds' spread, the uncalibrated score, or the reason it could not be scored),
``roc.png`` (with its bootstrap band), ``calibration.png`` (reliability before and after
calibration) and ``decision.png`` (net benefit). The figures are
:func:`pipeline.model.performance.performance`'s, the statistics training and the console
use. A case that cannot be preprocessed is listed with its reason and counted, never dropped
silently; patients the bundle was trained on are named, since then the evaluation is not
independent.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence, cast

import numpy as np

from pipeline.model.bundle import Manifest
from pipeline.model.device import DEVICES
from pipeline.model.performance import auc, auc_ci, performance, roc_band, threshold_figures
from training.cache import PreparedCohort, prepare_cohort
from training.cohort import Cohort, read_cohort, with_received_files
from training.export import write_folder
from training.report import _ci, _clean, _fmt, figure_lines

__all__ = ["EvaluationError", "EvaluatedCase", "EvaluationOutcome", "evaluate_bundle", "SUBGROUPS"]

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """The evaluation cannot be made (output folder exists, no case scored); one line."""


@dataclass(frozen=True)
class EvaluatedCase:
    patient_id: str
    study_uid: str
    label: int
    probability: float | None = None
    raw_score: float | None = None
    positive: bool | None = None
    fold_probabilities: tuple[float, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)
    failure: str = ""

    @property
    def scored(self) -> bool:
        return self.probability is not None


@dataclass
class EvaluationOutcome:
    folder: Path
    report: dict[str, Any]
    cases: list[EvaluatedCase]


def _band(name: str, value: Any) -> str:
    """A subgroup's label for one acquisition attribute's value."""
    if value is None:
        return "unknown"
    if name == "field_strength_t":
        # scanners write their exact field (1.494, 2.89362 T): named by the nearest usual one
        nominal = min((1.5, 3.0, 7.0), key=lambda t: abs(float(value) - t))
        return f"{nominal:g} T" if abs(float(value) - nominal) <= 0.15 else ("< 1.5 T" if value < 1.5 else "other")
    if name == "slice_thickness_mm":
        return "<= 1.5 mm" if value <= 1.5 else ("1.5-3 mm" if value <= 3.0 else "> 3 mm")
    return str(value)


#: The subgroups of the report: (attribute, title).
SUBGROUPS = (("manufacturer", "Manufacturer"), ("field_strength_t", "Field strength"),
             ("slice_thickness_mm", "Slice thickness"), ("acquisition", "Acquisition (2D/3D)"),
             ("institution", "Institution"))


def _subgroups(cases: list[EvaluatedCase], threshold: float, resamples: int, seed: int) -> list[dict[str, Any]]:
    rows = []
    for name, title in SUBGROUPS:
        groups: dict[str, list[EvaluatedCase]] = {}
        for case in cases:
            groups.setdefault(_band(name, case.attributes.get(name)), []).append(case)
        for value, members in sorted(groups.items()):
            y = np.array([c.label for c in members])
            p = np.array([c.probability for c in members], dtype=np.float64)
            t = threshold_figures(y, p, threshold)
            rows.append({"attribute": name, "title": title, "value": value, "patients": len(members),
                         "positives": int(y.sum()), "auc": auc(y, p), "auc_ci": list(auc_ci(y, p, resamples, seed)),
                         "sensitivity": t["sensitivity"], "specificity": t["specificity"]})
    return rows


def _score(prepared: PreparedCohort, ensemble: Any) -> list[EvaluatedCase]:
    cases = []
    for entry, array, attributes in zip(prepared.entries, prepared.inputs, prepared.attributes or [{}] * len(prepared.entries)):
        prediction = ensemble.predict(array)
        cases.append(EvaluatedCase(entry.patient_id, entry.study_uid, int(entry.label), float(prediction.probability),
                                   float(prediction.raw_score), bool(prediction.positive),
                                   tuple(float(v) for v in prediction.fold_probabilities), dict(attributes)))
    return cases


def evaluate_bundle(bundle: Path, cohort_csv: Path | Cohort, out_dir: Path, *, archive_root: Path | None = None,
                    database_url: str | None = None, cache_dir: Path | None = None, device: str = "cpu",
                    bootstrap: int = 2000, seed: int = 0,
                    progress: Callable[[int, int], None] | None = None) -> EvaluationOutcome:
    """Score the bundle in ``bundle`` on the cohort, write the report to ``out_dir`` (which
    must not exist) and return it. ``cache_dir`` (default: beside ``out_dir``) holds the
    preprocessed inputs, keyed by study and the bundle's preprocessing parameters."""
    import torch

    from pipeline.model.infer import FoldEnsemble
    from pipeline.model.device import resolve_device

    out_dir = Path(out_dir).absolute()
    if out_dir.exists():
        raise EvaluationError(f"{out_dir} already exists; choose a new folder for the evaluation")
    started = datetime.now(timezone.utc)
    bundle = Path(bundle).absolute()
    manifest = Manifest.load_checked(bundle)
    ensemble = FoldEnsemble.load(bundle, manifest, device=resolve_device(device))
    cohort = read_cohort(cohort_csv, archive_root)
    if database_url and archive_root is not None:
        cohort = with_received_files(cohort, database_url, archive_root)
    cache_dir = Path(cache_dir) if cache_dir is not None else out_dir.parent / ".egfr-train-cache"
    prepared = prepare_cohort(cohort, manifest.preprocessing, cache_dir, progress=progress)
    with torch.inference_mode():
        scored = _score(prepared, ensemble)
    failed = [EvaluatedCase(f.patient_id, f.study_uid, next(e.label for e in cohort.entries if e.study_uid == f.study_uid),
                            failure=f.reason) for f in prepared.failures]
    if not scored:
        raise EvaluationError(f"no case of {len(cohort)} could be scored; first reasons: "
                              + "; ".join(f"{c.study_uid}: {c.failure}" for c in failed[:3]))
    report = _report(bundle, manifest, cohort.source, scored, failed, bootstrap, seed, device, started)
    write_folder(out_dir, lambda folder: _write(folder, report, scored, failed, bootstrap, seed), "the evaluation")
    return EvaluationOutcome(out_dir, report, scored + failed)


def _report(bundle: Path, manifest: Manifest, cohort_csv: Path, scored: list[EvaluatedCase], failed: list[EvaluatedCase],
            bootstrap: int, seed: int, device: str, started: datetime) -> dict[str, Any]:
    from training.run import code_version

    y = np.array([c.label for c in scored])
    p = np.array([c.probability for c in scored], dtype=np.float64)
    raw = np.array([c.raw_score for c in scored], dtype=np.float64)
    figures = performance(y, p, manifest.threshold, bootstrap, seed, raw_scores=raw)
    splits = [row for row in manifest.training.get("splits", []) if isinstance(row, dict)]
    trained_on = {row.get("study_uid") for row in splits}
    trained_patients = {row.get("patient_id") for row in splits} - {None, ""}
    overlap = sorted(c.study_uid for c in scored + failed if c.study_uid in trained_on)
    # another study of a patient ID that trained the bundle: a follow-up of that patient, or an
    # ID another cohort happens to reuse; named by study UID, for the researcher to check
    same_patient_id = sorted(c.study_uid for c in scored + failed
                             if c.study_uid not in trained_on and c.patient_id in trained_patients)
    spreads = [float(np.std(c.fold_probabilities)) for c in scored if c.fold_probabilities]
    calibration = manifest.calibration_map
    report = {
        "title": "EGFR bundle evaluation on a labelled cohort",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "started": started.isoformat(timespec="seconds"),
        "code_version": code_version(),
        "bundle": {"path": str(bundle), "name": manifest.name, "version": manifest.version,
                   "device_uid": manifest.device_uid, "folds": len(manifest.folds),
                   "slice_aggregation": manifest.slice_aggregation, "fold_aggregation": manifest.fold_aggregation,
                   "fold_scale": manifest.fold_scale,
                   "calibration": calibration.to_dict(), "calibration_text": calibration.describe(),
                   "threshold": manifest.threshold, "threshold_rule": manifest.threshold_rule or "not recorded",
                   "cross_validated_auc": manifest.metrics.get("pooled_patient_auc"),
                   "cross_validated_auc_ci": manifest.metrics.get("pooled_patient_auc_ci95")},
        "cohort_csv": str(cohort_csv),
        "device": device,
        "preprocessing_text": manifest.preprocessing.describe(),
        "cases_listed": len(scored) + len(failed),
        "cases_scored": len(scored),
        "cases_failed": len(failed),
        "failures": [{"patient_id": c.patient_id, "study_uid": c.study_uid, "reason": c.failure} for c in failed],
        "trained_on": overlap,
        "patient_id_in_training": same_patient_id,
        "auc": figures["auc"],
        "auc_ci": figures["auc_ci"],
        "figures": figures,
        "fold_spread": {"mean_sd": float(np.mean(spreads)) if spreads else None,
                        "max_sd": float(np.max(spreads)) if spreads else None},
        "subgroups": _subgroups(scored, manifest.threshold, bootstrap, seed),
        "statement": ("The bundle was scored as the node serves it, one study at a time. "
                      + ("Some of these patients trained the bundle: this is not an independent evaluation. "
                         if overlap else
                         f"{len(same_patient_id)} of these studies belong to a patient ID that is in the bundle's "
                         "training splits (another study of a training patient, or an ID reused by another cohort): "
                         "if they are the same patients, this is not an independent evaluation. "
                         if same_patient_id else
                         "None of these studies or patient IDs is in the bundle's training splits. ")
                      + "Figures on one site's patients describe that site's scanners, protocols and population; only "
                        "cohorts from other centres show how the model transfers."),
        "bootstrap": bootstrap,
    }
    cleaned: dict[str, Any] = _clean(report)
    return cleaned


def render_markdown(report: dict[str, Any]) -> str:
    b = report["bundle"]
    f = report["figures"]
    lines = [f"# {report['title']}", "", f"> {report['statement']}", "",
             "## Bundle (as served)",
             f"- {b['name']} {b['version']} ({b['folds']} folds), `{b['path']}`, device UID {b['device_uid']}.",
             f"- Rule: slices by {b['slice_aggregation']} per fold model, folds by the {b['fold_aggregation']} of their "
             f"{b['fold_scale']}s, then calibration {b['calibration_text']}; threshold {b['threshold']:.3f} "
             f"({b['threshold_rule']}).",
             f"- Cross-validated AUC recorded in the bundle: {_fmt(b['cross_validated_auc'])} "
             f"({_ci(b['cross_validated_auc_ci'])}).",
             "", "## Preprocessing (the bundle's)", ""] + [f"- {line}" for line in report["preprocessing_text"]]
    lines += ["", "## Cases",
              f"- {report['cases_listed']} listed in `{Path(report['cohort_csv']).name}`, {report['cases_scored']} scored, "
              f"{report['cases_failed']} could not be scored" + (":" if report["failures"] else ".")]
    lines += [f"  - {c['study_uid']}: {c['reason']}" for c in report["failures"]]
    if report["trained_on"]:
        lines.append(f"- **{len(report['trained_on'])} of these studies are in the bundle's training splits**: "
                     + ", ".join(report["trained_on"][:10]) + (" ..." if len(report["trained_on"]) > 10 else ""))
    if report.get("patient_id_in_training"):
        same = report["patient_id_in_training"]
        lines.append(f"- **{len(same)} of these studies have a patient ID that is in the bundle's training splits** "
                     "(check whether they are the same patients): " + ", ".join(same[:10]) + (" ..." if len(same) > 10 else ""))
    lines += ["", "## Performance (patient level, scored cases)", ""]
    lines += figure_lines(f, raw_label="without the bundle's calibration (the folds' mean score)")
    spread = report["fold_spread"]
    lines.append(f"- The fold models' spread on a case (SD of their probabilities): mean {_fmt(spread['mean_sd'], 3)}, "
                 f"largest {_fmt(spread['max_sd'], 3)}.")
    lines += ["", "## Net benefit (decision curve)", "",
              "| threshold probability | model | treat all | treat none |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['threshold']:.2f} | {r['model']:.3f} | {r['treat_all']:.3f} | 0 |" for r in f["net_benefit"]]
    lines += ["", "## Subgroups (from the headers of the chosen series)", "",
              "| attribute | value | patients (positive) | AUC (95 % CI) | sensitivity | specificity |",
              "| --- | --- | --- | --- | --- | --- |"]
    for row in report["subgroups"]:
        lines.append(f"| {row['title']} | {row['value']} | {row['patients']} ({row['positives']}) | {_fmt(row['auc'])} "
                     f"({_ci(row['auc_ci'])}) | {_fmt(row['sensitivity']['value'])} | {_fmt(row['specificity']['value'])} |")
    lines += ["", "A subgroup with one class has no AUC; small subgroups' figures are very uncertain.", "",
              "Files: `cases.csv`, `roc.png`, `calibration.png`, `decision.png`, `report.json`.",
              f"Code: {report['code_version']}; bootstrap resamples {report['bootstrap']}.", ""]
    return "\n".join(lines)


def _write(folder: Path, report: dict[str, Any], scored: list[EvaluatedCase], failed: list[EvaluatedCase],
           resamples: int, seed: int) -> None:
    from pipeline.model.plots import decision_curve_figure, reliability_figure, roc_figure, save_png

    (folder / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(render_markdown(report), encoding="utf-8")
    with open(folder / "cases.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "study_uid", "label", "probability", "status", "raw_score", "fold_sd", "fold_min",
                         "fold_max", "series_uid", "mask_sop_uid", "mask_kind", "manufacturer", "field_strength_t",
                         "slice_thickness_mm", "acquisition", "institution", "failure"])
        for c in scored + failed:
            folds = np.array(c.fold_probabilities) if c.fold_probabilities else None
            writer.writerow([c.patient_id, c.study_uid, c.label,
                             "" if c.probability is None else f"{c.probability:.6f}",
                             "" if c.positive is None else ("positive" if c.positive else "negative"),
                             "" if c.raw_score is None else f"{c.raw_score:.6f}",
                             "" if folds is None else f"{folds.std():.6f}", "" if folds is None else f"{folds.min():.6f}",
                             "" if folds is None else f"{folds.max():.6f}",
                             *[c.attributes.get(k) if c.attributes.get(k) is not None else ""
                               for k in ("series_uid", "mask_sop_uid", "mask_kind", "manufacturer", "field_strength_t",
                                         "slice_thickness_mm", "acquisition", "institution")],
                             c.failure])
    y = np.array([c.label for c in scored])
    p = np.array([c.probability for c in scored], dtype=np.float64)
    f = report["figures"]
    curve = (f"bundle as served (AUC {_fmt(f['auc'])})", cast("Sequence[int]", y), cast("Sequence[float]", p))
    save_png(roc_figure([curve], roc_band(y, p, min(resamples, 1000), seed),
                        title=f"ROC, {len(y)} patients"), folder / "roc.png")
    cal, raw = f["calibration"], f["calibration_raw"]
    title = (f"Calibration: slope {_fmt(raw['slope'])} -> {_fmt(cal['slope'])}, in-the-large {_fmt(raw['in_the_large'])} -> "
             f"{_fmt(cal['in_the_large'])}")
    save_png(reliability_figure({"without calibration": f["reliability_raw"], "as served (calibrated)": f["reliability"]},
                                title), folder / "calibration.png")
    save_png(decision_curve_figure(f["net_benefit"]), folder / "decision.png")



def build_parser(prog: str = "egfr-node evaluate") -> Any:
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="Score a frozen bundle as the node serves it on a labelled cohort.")
    p.add_argument("--bundle", required=True, help="bundle folder, or a registered bundle's id (egfr-node models list)")
    p.add_argument("--cohort", type=Path, required=True, help="cohort CSV, as for train: patient id, Study Instance UID, EGFR status")
    p.add_argument("--out", type=Path, required=True, help="folder to create for the report (must not exist)")
    p.add_argument("--device", choices=DEVICES, default="cpu")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples for the intervals (default 2000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="preprocessing cache folder (default: beside --out)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None, *, archive_root: Path | None = None, database_url: str | None = None) -> int:
    """``egfr-node evaluate``: 0 when the report was written, 1 on a one-line error."""
    import sys

    from pipeline.model.bundle import BundleError
    from training.cohort import CohortError, node_database

    args = build_parser().parse_args(argv)
    database_url = node_database(database_url)
    try:
        if args.bootstrap < 0:
            raise ValueError(f"--bootstrap must be at least 0, got {args.bootstrap}")
        bundle = _bundle_folder(args.bundle, database_url)
        from tqdm.auto import tqdm

        bar = tqdm(desc="preprocess", unit="study", disable=args.no_progress)

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(1)

        outcome = evaluate_bundle(bundle, args.cohort, args.out, archive_root=archive_root, database_url=database_url,
                                  cache_dir=args.cache, device=args.device, bootstrap=args.bootstrap, seed=args.seed,
                                  progress=progress)
        bar.close()
    except KeyboardInterrupt:
        print("interrupted: no report written", file=sys.stderr)
        return 130
    except (CohortError, EvaluationError, BundleError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    r = outcome.report
    print(f"evaluated {r['bundle']['name']} {r['bundle']['version']} on {r['cases_scored']} of {r['cases_listed']} cases "
          f"({r['cases_failed']} could not be scored): AUC {_fmt(r['auc'])} (95% CI {_ci(r['auc_ci'])}); "
          f"report {outcome.folder / 'report.md'}")
    if r["trained_on"]:
        print(f"warning: {len(r['trained_on'])} of these studies trained the bundle: not an independent evaluation")
    elif r["patient_id_in_training"]:
        print(f"warning: {len(r['patient_id_in_training'])} of these studies have a patient ID that trained the bundle: "
              "check whether they are the same patients")
    return 0


def _bundle_folder(key: str, database_url: str | None) -> Path:
    """A bundle folder, or the folder of the registered bundle with that id."""
    if Path(key).is_dir() or not key.isdigit():
        return Path(key)
    if not database_url:
        raise ValueError(f"--bundle {key}: a bundle id needs the node's database; give the bundle's folder")
    from db.bundles import get_bundle
    from db.engine import make_engine, make_sessionmaker

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            return Path(get_bundle(session, int(key)).bundle_path)
    finally:
        engine.dispose()
