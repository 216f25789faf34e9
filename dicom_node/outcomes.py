"""The site's outcomes and the served model's running performance (issue 28, items 1-3): the
services the console, the API, ``egfr-node outcomes`` and ``/metrics`` share.

- :func:`record` / :func:`import_rows`: an outcome per study (``db.outcomes``), one by one from
  the console and the API, or a whole CSV at once (nothing of it applied when a row is wrong).
- :func:`performance_of`: for one bundle, its answers on the studies with a confirmed outcome
  (positive or negative; a metastasis's own tissue by default: "primary tumour only" is
  counted apart, as the primary and the metastasis can disagree) and the statistics of
  :func:`pipeline.model.performance.performance`, the same as ``evaluate``'s: counts per
  class, AUC with its CI once each class has a case (a caution under 10 per class),
  sensitivity and specificity at the bundle's threshold, the reliability curve, and the
  discordant cases.
- :func:`comparison`: two bundles (the active one and the shadow) on the same confirmed cases:
  the paired AUC difference with its bootstrap CI and the cases where they disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from db import audit, bundles
from db.outcomes import OutcomeError, OutcomeRow, OutcomeValue, Prediction, predictions, record_outcome
from pipeline.model.performance import paired_auc_difference, performance

__all__ = ["MIN_PER_CLASS", "record", "import_rows", "performance_of", "comparison", "OutcomeError",
           "METASTASIS_SOURCES"]

#: Below this many confirmed cases of a class the figures carry a caution.
MIN_PER_CLASS = 10
#: Tissue of the metastasis itself (what the node predicts); "primary_only" is counted apart.
METASTASIS_SOURCES = ("resection", "biopsy")


def record(sessions: sessionmaker[Session], study_uid: str, value: OutcomeValue, *, user: str, via: str,
           remote: str = "") -> dict[str, Any]:
    """Record one study's outcome (history kept, study pinned) and audit it."""
    try:
        with sessions.begin() as session:
            view, changed = record_outcome(session, study_uid, value, user=user, via=via)
            audit.record(session, user, "outcome", f"study {study_uid}"[:128],
                         f"{value.status} ({value.source})" if changed else "unchanged", remote)
    except OutcomeError as exc:
        # the refused change is rolled back; the refusal is audited in a transaction of its own
        with sessions.begin() as session:
            audit.record(session, user, "outcome", f"study {study_uid}"[:128], f"refused: {exc}", remote)
        raise
    return {"outcome": view.to_json(), "changed": changed}


def import_rows(sessions: sessionmaker[Session], rows: Sequence[OutcomeRow], *, user: str,
                archive_root: Path | None = None) -> tuple[int, int]:
    """Apply every row in one transaction: a row naming a study the node does not have, or
    (with ``archive_root``) a patient ID other than the one the study's received images carry
    (a Study UID copied from another patient's line), stops the import with its line, and
    nothing of the file is applied. (changed, unchanged)."""
    changed = unchanged = 0
    with sessions.begin() as session:
        for row in rows:
            try:
                if archive_root is not None and row.patient_id.strip():
                    _check_patient(session, archive_root, row)
                _, done = record_outcome(session, row.study_uid, row.value, user=user, via="import")
            except OutcomeError as exc:
                raise OutcomeError(f"line {row.line}: {exc}") from None
            changed, unchanged = changed + done, unchanged + (not done)
        audit.record(session, user, "outcome import", f"{len(rows)} rows", f"{changed} changed, {unchanged} unchanged")
    return changed, unchanged


def _check_patient(session: Session, archive_root: Path, row: OutcomeRow) -> None:
    """OutcomeError when the row's patient ID is not the one in the study's first received
    instance (compared without case or surrounding spaces; neither ID is repeated in the message)."""
    import pydicom

    from db.instances import received_study_paths

    paths = received_study_paths(session, row.study_uid)
    if not paths:
        return  # not in the archive: record_outcome says so
    ds = pydicom.dcmread(Path(archive_root) / paths[0], stop_before_pixels=True, specific_tags=["PatientID"])
    if str(ds.get("PatientID", "")).strip().casefold() != row.patient_id.strip().casefold():
        raise OutcomeError(f"the patient ID does not match the one in study {row.study_uid}'s images (a Study UID "
                           "from another patient's line?): correct it, or leave the patient_id column empty")


def _counted(rows: list[Prediction], include_primary: bool) -> tuple[list[Prediction], dict[str, int]]:
    sources = (*METASTASIS_SOURCES, "primary_only") if include_primary else METASTASIS_SOURCES
    counted = [p for p in rows if p.outcome.label is not None and p.outcome.source in sources]
    apart = {
        "not_assessable": sum(1 for p in rows if p.outcome.label is None),
        "primary_only": 0 if include_primary else sum(1 for p in rows if p.outcome.label is not None
                                                      and p.outcome.source == "primary_only"),
    }
    return counted, apart


def performance_of(sessions: sessionmaker[Session], model_id: int, *, include_primary: bool = False,
                   resamples: int = 2000) -> dict[str, Any]:
    """The running performance of bundle ``model_id`` on the site's confirmed cases."""
    with sessions() as session:
        record = bundles.get_bundle(session, model_id)
        rows = predictions(session, model_id)
    threshold, unreadable = _threshold(record.bundle_path)
    counted, apart = _counted(rows, include_primary)
    if unreadable:
        # the statuses the node gave stand: the lowest probability it called positive reproduces them
        threshold = min((p.probability for p in counted if p.positive), default=1.0)
    y = np.array([p.outcome.label for p in counted], dtype=int)
    probability = np.array([p.probability for p in counted], dtype=np.float64)
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    out: dict[str, Any] = {
        "bundle": {"id": record.id, "name": record.name, "version": record.version, "active": record.active,
                   "shadow": record.shadow, "threshold": threshold},
        "sources": list(METASTASIS_SOURCES) + (["primary_only"] if include_primary else []),
        "confirmed": {"positive": positives, "negative": negatives},
        "not_counted": apart,
        "caution": None,
        "figures": None,
        "discordant": [],
    }
    if positives < MIN_PER_CLASS or negatives < MIN_PER_CLASS:
        out["caution"] = (f"fewer than {MIN_PER_CLASS} confirmed cases of a class ({positives} positive, {negatives} "
                          "negative): every figure here is very uncertain")
    if unreadable:
        out["caution"] = "; ".join(filter(None, [out["caution"], (
            f"the bundle's manifest cannot be read ({unreadable}): its decision threshold is unknown, so sensitivity "
            "and specificity are those of the statuses the node gave")]))
    if positives and negatives:
        out["figures"] = performance(y, probability, threshold, resamples, 0)
    elif y.size:
        out["figures"] = {"patients": int(y.size), "positives": positives, "negatives": negatives,
                          "note": "no AUC until each class has a confirmed case"}
    out["discordant"] = [{"study_uid": p.study_uid, "job_id": p.job_id, "role": p.role, "probability": p.probability,
                          "predicted": "positive" if p.positive else "negative", "pathology": p.outcome.status,
                          "source": p.outcome.source} for p in counted if p.positive != bool(p.outcome.label)]
    return out


def _threshold(bundle_path: str) -> tuple[float, str]:
    """The bundle's decision threshold, read from its manifest, and "" ; (nan, why) when the
    manifest cannot be read (the bundle folder moved or was deleted)."""
    from pipeline.model.bundle import BundleError, Manifest

    try:
        return Manifest.read(Path(bundle_path)).threshold, ""
    except (BundleError, OSError) as exc:
        return float("nan"), f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else bundle_path}"


def comparison(sessions: sessionmaker[Session], model_a: int, model_b: int, *, include_primary: bool = False,
               resamples: int = 2000) -> dict[str, Any]:
    """Bundles ``model_a`` (the active one) and ``model_b`` (the shadow) on the confirmed cases
    both answered: AUC(a) - AUC(b) paired on those patients, and where their status differs."""
    with sessions() as session:
        a = {p.study_uid: p for p in predictions(session, model_a)}
        b = {p.study_uid: p for p in predictions(session, model_b)}
    both, _ = _counted([a[uid] for uid in a if uid in b], include_primary)
    y = np.array([p.outcome.label for p in both], dtype=int)
    out: dict[str, Any] = {"a": model_a, "b": model_b, "cases": int(y.size), "positives": int(y.sum()),
                           "paired": None, "disagree": []}
    if y.size and 0 < y.sum() < y.size:
        out["paired"] = paired_auc_difference(y, [p.probability for p in both], [b[p.study_uid].probability for p in both],
                                              resamples, 0)
    out["disagree"] = [{"study_uid": p.study_uid, "job_id": p.job_id, "a": "positive" if p.positive else "negative",
                        "b": "positive" if b[p.study_uid].positive else "negative", "pathology": p.outcome.status,
                        "a_probability": p.probability, "b_probability": b[p.study_uid].probability}
                       for p in both if p.positive != b[p.study_uid].positive]
    return out
