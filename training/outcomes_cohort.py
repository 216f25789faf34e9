"""A training cohort from the site's confirmed outcomes (issue 28, item 4): no hand-made CSV.

Every study with a recorded outcome of positive or negative from the metastasis itself
(resection or biopsy; the primary tumour only with ``include_primary``), optionally only those
with a pathology date on or after ``since``, read from the node's archive as its jobs read it
(the received instances). With ``holdout_after`` the cases whose pathology date is after it
are kept apart (a temporal split), with every other study of the same patients: the new bundle
never sees them, and ``evaluate`` measures it on them. Patients are grouped by a pseudonym of their Patient ID keyed by a random value of
this run, so two studies of one patient stay in one fold and no ID reaches the bundle. The
provenance (which outcomes, entered when and by whom, from which tissue) goes into the bundle.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import pydicom

from training.cohort import Cohort, CohortEntry, CohortError, with_received_files

__all__ = ["OutcomeCohort", "cohort_from_outcomes"]

METASTASIS_SOURCES = ("resection", "biopsy")


@dataclass
class OutcomeCohort:
    train: Cohort
    holdout: Cohort | None
    provenance: dict[str, Any] = field(default_factory=dict)


def _pseudonyms(cohort: Cohort) -> dict[str, str]:
    """Study UID -> a pseudonym of its Patient ID (keyed by this run's random value)."""
    key = secrets.token_bytes(16)
    out = {}
    for entry in cohort.entries:
        patient = ""
        for path in entry.files or ():
            patient = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"]).get("PatientID", ""))
            break
        digest = hashlib.blake2b((patient or entry.study_uid).encode("utf-8"), key=key, digest_size=6).hexdigest()
        out[entry.study_uid] = f"P-{digest}"
    return out


def cohort_from_outcomes(database_url: str, archive_root: Path, *, since: date | None = None,
                         holdout_after: date | None = None, include_primary: bool = False) -> OutcomeCohort:
    """The confirmed outcomes as a training cohort (and a temporal hold-out). CohortError
    when no confirmed case is left."""
    from db.engine import make_engine, make_sessionmaker
    from db.outcomes import list_outcomes

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            views = list_outcomes(session, since=since)
    finally:
        engine.dispose()
    sources = (*METASTASIS_SOURCES, "primary_only") if include_primary else METASTASIS_SOURCES
    confirmed = [(v, label) for v in views if (label := v.value.label) is not None and v.value.source in sources]
    used = [v for v, _ in confirmed]
    if not used:
        raise CohortError(f"no confirmed outcome (positive or negative, from {', '.join(sources)})"
                          + (f" with a pathology date on or after {since.isoformat()}" if since else "")
                          + ": record outcomes first (egfr-node outcomes import, or the console)")
    source = Path("the node's outcomes")
    everything = with_received_files(Cohort(source, tuple(
        CohortEntry(v.study_uid, v.study_uid, label, Path(archive_root) / v.study_uid, row=i + 1,
                    in_archive=True) for i, (v, label) in enumerate(confirmed))), database_url, archive_root)
    names = _pseudonyms(everything)
    entries = []
    counts: dict[str, int] = {}
    for entry in everything.entries:
        group = names[entry.study_uid]
        counts[group] = counts.get(group, 0) + 1
        entries.append(CohortEntry(f"{group}-{counts[group]}", entry.study_uid, entry.label, entry.folder, group=group,
                                   row=entry.row, in_archive=True, files=entry.files))
    by_uid = {v.study_uid: v for v in used}
    after = {e.study_uid for e in entries if holdout_after is not None
             and (when := by_uid[e.study_uid].value.outcome_date) is not None and when > holdout_after}
    # A patient is held out whole: an earlier study of a patient whose later one is held out
    # would otherwise train the bundle that is then measured on that patient.
    held_groups = {e.group for e in entries if e.study_uid in after}
    later = {e.study_uid for e in entries if e.group in held_groups}
    train = Cohort(source, tuple(e for e in entries if e.study_uid not in later))
    holdout = Cohort(source, tuple(e for e in entries if e.study_uid in later)) if holdout_after is not None else None
    provenance = {
        "source": "the node's recorded pathology outcomes",
        "sources_counted": list(sources),
        "since": since.isoformat() if since else None,
        "holdout_after": holdout_after.isoformat() if holdout_after else None,
        "not_counted": {"not_assessable": sum(1 for v in views if v.value.label is None),
                        "other_tissue": sum(1 for v in views if v.value.label is not None and v.value.source not in sources)},
        "outcomes": [{"study_uid": v.study_uid, "status": v.value.status, "source": v.value.source,
                      "date": v.value.outcome_date.isoformat() if v.value.outcome_date else None,
                      "entered_by": v.entered_by, "entered_at": v.entered_at.isoformat() + "Z",
                      "updated_by": v.updated_by, "updated_at": v.updated_at.isoformat() + "Z",
                      "role": ("holdout" if v.study_uid in after else "holdout (same patient as a later case)")
                      if v.study_uid in later else "train"} for v in used],
    }
    return OutcomeCohort(train, holdout, provenance)
