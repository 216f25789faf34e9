"""What the admin console shows beside the queue: the studies received (counts, last
arrival, why one waits), each destination's last success and failure, the latest error, and
where an archived instance lies. Queries only; the console has no SQL of its own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Delivery, DeliveryState, Instance, Job, JobState, Series, Study
from db.queue import study_readiness

__all__ = ["StudyView", "DestinationView", "list_studies", "destination_views", "instance_path", "latest_error",
           "count_studies"]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() + "Z" if value else None


@dataclass(frozen=True)
class StudyView:
    study_uid: str
    first_received_at: datetime
    last_received_at: datetime
    series: int
    instances: int
    results: int
    latest_job_id: int | None
    latest_job_state: str | None
    #: why the study has no job running or done: what it lacks, or its waiting job's reason
    waiting_because: str | None

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "first_received_at": _iso(self.first_received_at),
                "last_received_at": _iso(self.last_received_at)}


@dataclass(frozen=True)
class DestinationView:
    name: str
    sent: int
    open: int
    failed: int
    last_sent_at: datetime | None
    last_failure_at: datetime | None
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "last_sent_at": _iso(self.last_sent_at), "last_failure_at": _iso(self.last_failure_at)}


def count_studies(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(Study)) or 0)


def list_studies(session: Session, limit: int = 50, offset: int = 0) -> list[StudyView]:
    """Studies, latest arrival first, with what was received and where each stands."""
    studies = session.scalars(select(Study).order_by(Study.last_received_at.desc(), Study.id.desc())
                              .limit(limit).offset(offset)).all()
    ids = [s.id for s in studies]
    series = dict(session.execute(select(Series.study_id, func.count()).where(Series.study_id.in_(ids))
                                  .group_by(Series.study_id)).all())
    counts: dict[tuple[int, str], int] = {}
    for study_id, origin, count in session.execute(
            select(Series.study_id, Instance.origin, func.count()).join(Instance, Instance.series_id == Series.id)
            .where(Series.study_id.in_(ids)).group_by(Series.study_id, Instance.origin)):
        counts[(study_id, origin)] = count
    latest = {job.study_id: job for job in session.scalars(
        select(Job).where(Job.id.in_(select(func.max(Job.id)).where(Job.study_id.in_(ids)).group_by(Job.study_id))))}
    views = []
    for study in studies:
        job = latest.get(study.id)
        waiting: str | None = None
        if job is None:
            readiness = study_readiness(session, study)
            waiting = readiness.reason or "ready; the next scan queues it"
        elif job.state == JobState.WAITING:
            waiting = job.reason or "waiting for the study to be quiet"
        views.append(StudyView(
            study.study_uid, study.first_received_at, study.last_received_at, int(series.get(study.id, 0)),
            int(counts.get((study.id, "received"), 0)), int(counts.get((study.id, "node"), 0)),
            job.id if job else None, job.state.value if job else None, waiting))
    return views


def destination_views(session: Session, names: list[str]) -> list[DestinationView]:
    """Each configured destination (and any other with deliveries on record): counts by
    outcome, the last delivery sent, and the last failed try with its reason."""
    rows = session.execute(select(Delivery.destination, Delivery.state, func.count(), func.max(Delivery.sent_at))
                           .group_by(Delivery.destination, Delivery.state)).all()
    known = list(dict.fromkeys([*names, *(r[0] for r in rows)]))
    views = []
    for name in known:
        mine = [r for r in rows if r[0] == name]
        by_state = {getattr(r[1], "value", str(r[1])): r[2] for r in mine}
        sent_times = [r[3] for r in mine if r[3] is not None]
        failure = session.execute(
            select(Delivery.updated_at, Delivery.last_error)
            .where(Delivery.destination == name, Delivery.last_error.is_not(None))
            .order_by(Delivery.updated_at.desc()).limit(1)).first()
        views.append(DestinationView(
            name, by_state.get(DeliveryState.SENT.value, 0),
            by_state.get(DeliveryState.PENDING.value, 0) + by_state.get(DeliveryState.RETRYING.value, 0),
            by_state.get(DeliveryState.FAILED.value, 0), max(sent_times) if sent_times else None,
            failure[0] if failure else None, failure[1] if failure else None))
    return views


def latest_error(session: Session) -> tuple[datetime, str] | None:
    """The most recent failure: a failed job's reason or a delivery's last error, with its time."""
    job = session.execute(select(Job.updated_at, Job.id, Job.reason).where(Job.state == JobState.FAILED)
                          .order_by(Job.updated_at.desc()).limit(1)).first()
    delivery = session.execute(select(Delivery.updated_at, Delivery.id, Delivery.destination, Delivery.last_error)
                               .where(Delivery.last_error.is_not(None))
                               .order_by(Delivery.updated_at.desc()).limit(1)).first()
    found = []
    if job:
        found.append((job[0], f"job {job[1]} failed: {job[2]}"))
    if delivery:
        found.append((delivery[0], f"delivery {delivery[1]} to {delivery[2]}: {delivery[3]}"))
    return max(found) if found else None


def instance_path(session: Session, sop_instance_uid: str) -> str | None:
    """The archive-relative path of an instance, or None when it is not archived."""
    return session.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid))
