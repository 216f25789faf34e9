"""The site's pathology outcomes and what the node predicted for the same studies (issue 28).

An outcome belongs to a study: the EGFR status pathology found (positive, negative, not
assessable), when, from what tissue (resection or biopsy of the metastasis, or the primary
tumour only: the two can disagree, and the node predicts the metastasis), an optional
mutation subtype and a free-text reference. Every change is kept in ``outcome_change`` (who,
when, from where, the value before and after), in the same transaction as the change.
Recording an outcome pins its study against retention: a confirmed case is the site's
validation and its next training cohort.

``predictions`` returns, per study with a confirmed outcome, what one bundle answered for it
(its latest done job with that bundle, or its latest shadow result from it): the rows the
running performance is computed from (``pipeline.model.performance`` does the statistics).
Queries only; no statistics here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job, JobState, Model, Outcome, OutcomeChange, ShadowResult, Study, utcnow

__all__ = [
    "OutcomeStatus", "OutcomeSource", "MutationSubtype", "OutcomeError", "OutcomeValue", "OutcomeView", "ChangeView",
    "OutcomeRow", "Prediction", "record_outcome", "get_outcome", "list_outcomes", "history", "predictions", "PIN_REASON",
]

PIN_REASON = "pathology outcome recorded (the site's validation and retraining cohort)"


class OutcomeStatus(str, enum.Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"
    NOT_ASSESSABLE = "not_assessable"


class OutcomeSource(str, enum.Enum):
    RESECTION = "resection"
    BIOPSY = "biopsy"
    PRIMARY_ONLY = "primary_only"


class MutationSubtype(str, enum.Enum):
    EXON19_DELETION = "exon19_deletion"
    L858R = "L858R"
    OTHER = "other"


class OutcomeError(ValueError):
    """An outcome that cannot be recorded (unknown study, a value out of its list); one line."""


def _enum(kind: type[enum.Enum], name: str, value: Any, optional: bool = False) -> Any:
    if value in (None, "") and optional:
        return None
    try:
        return kind(value)
    except ValueError:
        raise OutcomeError(f"{name}: {value!r} is not one of {', '.join(m.value for m in kind)}") from None


@dataclass(frozen=True)
class OutcomeValue:
    """What pathology said about one study (checked on construction)."""

    status: str
    source: str
    outcome_date: date | None = None
    subtype: str | None = None
    reference: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", _enum(OutcomeStatus, "status", self.status).value)
        object.__setattr__(self, "source", _enum(OutcomeSource, "source", self.source).value)
        subtype = _enum(MutationSubtype, "subtype", self.subtype, optional=True)
        object.__setattr__(self, "subtype", subtype.value if subtype else None)
        if subtype is not None and self.status != OutcomeStatus.POSITIVE.value:
            raise OutcomeError(f"subtype: a mutation subtype ({subtype.value}) needs the status positive, not {self.status}")
        if self.outcome_date is not None and not isinstance(self.outcome_date, date):
            raise OutcomeError(f"date: {self.outcome_date!r} is not a date (YYYY-MM-DD)")
        if self.outcome_date is not None and self.outcome_date > date.today():
            raise OutcomeError(f"date: {self.outcome_date.isoformat()} is in the future")
        reference = (self.reference or "").strip()
        if len(reference) > 256:
            raise OutcomeError("reference: at most 256 characters")
        object.__setattr__(self, "reference", reference or None)

    @property
    def label(self) -> int | None:
        """1 positive, 0 negative, None not assessable."""
        return {"positive": 1, "negative": 0}.get(self.status)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "source": self.source,
                "date": self.outcome_date.isoformat() if self.outcome_date else None,
                "subtype": self.subtype, "reference": self.reference}


@dataclass(frozen=True)
class OutcomeRow:
    """One row of an outcomes CSV: the study and its outcome, with the line it came from."""

    line: int
    patient_id: str
    study_uid: str
    value: OutcomeValue


@dataclass(frozen=True)
class OutcomeView:
    study_uid: str
    value: OutcomeValue
    entered_by: str
    entered_at: datetime
    updated_by: str
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"study_uid": self.study_uid, **self.value.to_json(), "entered_by": self.entered_by,
                "entered_at": self.entered_at.isoformat() + "Z", "updated_by": self.updated_by,
                "updated_at": self.updated_at.isoformat() + "Z"}


@dataclass(frozen=True)
class ChangeView:
    at: datetime
    user: str
    via: str
    old: dict[str, Any] | None
    new: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat() + "Z", "user": self.user, "via": self.via, "old": self.old, "new": self.new}


def _value(row: Outcome) -> OutcomeValue:
    return OutcomeValue(row.status, row.source, row.outcome_date, row.subtype, row.reference)


def _view(row: Outcome) -> OutcomeView:
    return OutcomeView(row.study_uid, _value(row), row.entered_by, row.entered_at, row.updated_by, row.updated_at)


def record_outcome(session: Session, study_uid: str, value: OutcomeValue, *, user: str, via: str,
                   now: datetime | None = None) -> tuple[OutcomeView, bool]:
    """Record or change the outcome of a study the node has received; the change is kept in
    the history and the study is pinned against retention. (view, changed): recording the
    same value again changes nothing and adds no history row."""
    now = now or utcnow()
    study = session.scalars(select(Study).where(Study.study_uid == study_uid).with_for_update()).one_or_none()
    if study is None:
        raise OutcomeError(f"study {study_uid} is not in this node's archive")
    row = session.scalars(select(Outcome).where(Outcome.study_uid == study_uid).with_for_update()).one_or_none()
    old = _value(row).to_json() if row is not None else None
    if row is not None and old == value.to_json():
        return _view(row), False
    if row is None:
        row = Outcome(study_uid=study_uid, entered_by=user[:64], entered_at=now)
        session.add(row)
    row.status, row.source, row.outcome_date = value.status, value.source, value.outcome_date
    row.subtype, row.reference = value.subtype, value.reference
    row.updated_by, row.updated_at = user[:64], now
    session.add(OutcomeChange(study_uid=study_uid, at=now, user=user[:64], via=via[:16], old=old, new=value.to_json()))
    if study.pinned_at is None:
        study.pinned_at, study.pinned_by, study.pin_reason = now, user[:64], PIN_REASON
    session.flush()
    return _view(row), True


def get_outcome(session: Session, study_uid: str) -> OutcomeView | None:
    row = session.scalars(select(Outcome).where(Outcome.study_uid == study_uid)).one_or_none()
    return _view(row) if row is not None else None


def list_outcomes(session: Session, *, since: date | None = None) -> list[OutcomeView]:
    """Every recorded outcome (optionally with a pathology date on or after ``since``), oldest first."""
    query = select(Outcome).order_by(Outcome.id)
    if since is not None:
        query = query.where(Outcome.outcome_date >= since)
    return [_view(row) for row in session.scalars(query)]


def history(session: Session, study_uid: str) -> list[ChangeView]:
    """Every change of a study's outcome, newest first."""
    rows = session.scalars(select(OutcomeChange).where(OutcomeChange.study_uid == study_uid)
                           .order_by(OutcomeChange.id.desc()))
    return [ChangeView(r.at, r.user, r.via, r.old, r.new) for r in rows]


@dataclass(frozen=True)
class Prediction:
    """What one bundle answered for a study with a recorded outcome."""

    study_uid: str
    job_id: int
    probability: float
    positive: bool
    role: str  # "active" (a job's result, sent to PACS) or "shadow" (stored, never sent)
    outcome: OutcomeValue


def predictions(session: Session, model_id: int) -> list[Prediction]:
    """For every study with a recorded outcome, bundle ``model_id``'s latest answer: the result of
    its latest done job with that bundle, else its latest shadow result from it."""
    outcomes = {row.study_uid: _value(row) for row in session.scalars(select(Outcome))}
    if not outcomes:
        return []
    out: dict[str, Prediction] = {}
    latest_jobs = (select(Job.study_id, func.max(Job.id).label("job_id"))
                   .where(Job.model_id == model_id, Job.state == JobState.DONE).group_by(Job.study_id).subquery())
    query = (select(Study.study_uid, Job.id, Job.result).join(latest_jobs, latest_jobs.c.job_id == Job.id)
             .join(Study, Study.id == Job.study_id).where(Study.study_uid.in_(list(outcomes))))
    for study_uid, job_id, result in session.execute(query):
        if result and result.get("probability") is not None and result.get("status") in ("positive", "negative"):
            out[study_uid] = Prediction(study_uid, job_id, float(result["probability"]), result["status"] == "positive",
                                        "active", outcomes[study_uid])
    shadow = (select(Study.study_uid, ShadowResult.job_id, ShadowResult.result)
              .join(Job, Job.id == ShadowResult.job_id).join(Study, Study.id == Job.study_id)
              .where(ShadowResult.model_id == model_id, ShadowResult.state == "done",
                     Study.study_uid.in_(list(outcomes))).order_by(ShadowResult.id))
    for study_uid, job_id, result in session.execute(shadow):
        if study_uid not in out or out[study_uid].role == "shadow":
            out[study_uid] = Prediction(study_uid, job_id, float(result["probability"]), result["status"] == "positive",
                                        "shadow", outcomes[study_uid])
    return sorted(out.values(), key=lambda p: p.job_id)


def bundle_ids_with_predictions(session: Session) -> list[int]:
    """Bundles with at least one done job or shadow result (the performance page's choices)."""
    jobs = set(session.scalars(select(Job.model_id).where(Job.state == JobState.DONE, Job.model_id.is_not(None)).distinct()))
    shadows = set(session.scalars(select(ShadowResult.model_id).where(ShadowResult.state == "done").distinct()))
    known = set(session.scalars(select(Model.id)))
    return sorted(known & (jobs | shadows))
