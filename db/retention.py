"""Retention's queries: which studies may be deleted, pins, and the deletion record.

A study is *finished* when it has been answered: none of its jobs is waiting, queued or
running, no result of it is still pending or being retried, and its latest job is done with
every result sent. A study whose latest job failed or was cancelled, or never ran, has not
been answered: it is kept (issue 29: "every job failed" is not "nothing to send"; PACS may
still send what it lacked) until a later job succeeds and its results are sent, or an admin
releases it (``egfr-node archive release``: eligible then whatever its jobs say, busy ones
aside). It is *eligible* when it is also not pinned and not already being deleted; its age counts from the last of its arrival, its
jobs' ends and its deliveries. Deletion is two transactions around the file removal
(:func:`mark_deletion`, then :func:`finish_deletion`), so a crash in between leaves a
``marked`` row that the next sweep completes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, ScalarSelect, delete, func, select, update
from sqlalchemy.orm import Session, aliased

from db.engine import rowcount
from db.models import Deletion, Delivery, DeliveryState, Instance, Job, JobState, Outcome, Series, Study, utcnow

__all__ = ["Candidate", "DeletionView", "eligible_studies", "mark_deletion", "marked_deletions", "finish_deletion",
           "cancel_deletion", "still_eligible",
           "pin", "pinned", "unpin", "has_outcome", "release", "kept_unanswered", "StudyCounts", "study_counts", "deletion_totals", "recent_deletions", "marked_paths"]

_BUSY = (JobState.WAITING, JobState.QUEUED, JobState.RUNNING)
_UNSENT = (DeliveryState.PENDING, DeliveryState.RETRYING)


@dataclass(frozen=True)
class Candidate:
    study_id: int
    study_uid: str
    finished_at: datetime


@dataclass(frozen=True)
class DeletionView:
    id: int
    study_uid: str
    reason: str
    detail: str
    state: str
    marked_at: datetime
    finished_at: datetime | None
    instances: int
    size_bytes: int
    paths: tuple[str, ...]


def _view(row: Deletion) -> DeletionView:
    return DeletionView(row.id, row.study_uid, row.reason, row.detail, row.state, row.marked_at, row.finished_at,
                        row.instances, row.size_bytes, tuple(row.paths or ()))


def _latest_job() -> ScalarSelect[int]:
    """The id of the study's latest job (a scalar subquery on its own alias of ``job``)."""
    job = aliased(Job)
    return select(func.max(job.id)).where(job.study_id == Study.id).correlate(Study).scalar_subquery()


def _answered() -> ColumnElement[bool]:
    """The study's latest job is done and every result of it was sent."""
    latest = _latest_job()
    job = aliased(Job)
    latest_done = select(job.id).where(job.id == latest, job.state == JobState.DONE).correlate(Study).exists()
    latest_not_sent = (select(Delivery.id).where(Delivery.job_id == latest, Delivery.state != DeliveryState.SENT)
                       .correlate(Study).exists())
    return latest_done & ~latest_not_sent


def _settled() -> ColumnElement[bool]:
    """Nothing of the study is under way: no job waiting, queued or running, no result still
    pending or being retried."""
    job = aliased(Job)
    busy = select(job.id).where(job.study_id == Study.id, job.state.in_(_BUSY)).correlate(Study).exists()
    sending = aliased(Job)
    unsent = (select(Delivery.id).join(sending, Delivery.job_id == sending.id)
              .where(sending.study_id == Study.id, Delivery.state.in_(_UNSENT)).correlate(Study).exists())
    return ~busy & ~unsent


def _unkept() -> ColumnElement[bool]:
    """Neither pinned nor holding a recorded pathology outcome (the site's validation and
    retraining need those studies whatever their pin: a pin taken by a cohort and released
    after training must not release them)."""
    outcome = select(Outcome.id).where(Outcome.study_uid == Study.study_uid).correlate(Study).exists()
    return Study.pinned_at.is_(None) & ~outcome


def _finished_conditions() -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return _settled(), _answered() | Study.released_at.is_not(None)


def eligible_studies(session: Session, finished_before: datetime, limit: int = 100) -> list[Candidate]:
    """Eligible studies finished before ``finished_before``, the longest finished first."""
    marked = select(Deletion.id).where(Deletion.study_uid == Study.study_uid, Deletion.state == "marked").exists()
    last_job = select(func.max(Job.finished_at)).where(Job.study_id == Study.id).scalar_subquery()
    last_sent = (select(func.max(Delivery.sent_at)).join(Job, Delivery.job_id == Job.id)
                 .where(Job.study_id == Study.id).scalar_subquery())
    rows = session.execute(select(Study.id, Study.study_uid, Study.last_received_at, last_job, last_sent)
                           .where(_unkept(), ~marked, *_finished_conditions())).all()
    candidates = [Candidate(sid, uid, max(t for t in (received, ended, sent) if t is not None))
                  for sid, uid, received, ended, sent in rows]
    candidates = sorted((c for c in candidates if c.finished_at < finished_before), key=lambda c: (c.finished_at, c.study_id))
    return candidates[:limit]


def _lock_study(session: Session, study_id: int) -> Study | None:
    """The study row, locked until the transaction ends (PostgreSQL: FOR UPDATE, the lock the
    intake's study upsert and a pin take too; SQLite: every write transaction is exclusive)."""
    return session.scalar(select(Study).where(Study.id == study_id).with_for_update())


def still_eligible(session: Session, study_uid: str) -> bool:
    """Whether the study (by UID) is finished and not pinned now."""
    study_id = session.scalar(select(Study.id).where(Study.study_uid == study_uid))
    return study_id is not None and _still_eligible(session, study_id)


def _still_eligible(session: Session, study_id: int) -> bool:
    return session.execute(select(Study.id).where(Study.id == study_id, _unkept(),
                                                  *_finished_conditions())).first() is not None


def mark_deletion(session: Session, candidate: Candidate, reason: str, detail: str,
                  now: datetime | None = None) -> DeletionView | None:
    """Record that ``candidate`` is being deleted, with the instances it has now; None when it
    is no longer eligible (an instance arrived, even a copy of one it has; a replay; a pin).
    Raises IntegrityError when another sweeper marked it first. Once it is marked, a copy of
    one of its instances is refused (``db.ingest.StudyBeingDeleted``) until it is done."""
    now = now or utcnow()
    study = _lock_study(session, candidate.study_id)  # against a pin or an arrival committing meanwhile
    if study is None or study.last_received_at > candidate.finished_at or not _still_eligible(session, candidate.study_id):
        return None  # gone, re-sent since it was listed (even a copy moves its time), or given new work
    rows = session.execute(select(Instance.id, Instance.path, Instance.size_bytes).join(Series)
                           .where(Series.study_id == candidate.study_id).order_by(Instance.id)).all()
    jobs = session.scalar(select(func.count()).select_from(Job).where(Job.study_id == candidate.study_id)) or 0
    row = Deletion(study_uid=candidate.study_uid, reason=reason, detail=detail, state="marked", marked_at=now,
                   instance_ids=[r[0] for r in rows], paths=[r[1] for r in rows], instances=len(rows),
                   size_bytes=int(sum(r[2] for r in rows)), jobs=jobs)
    session.add(row)
    session.flush()  # IntegrityError when another sweeper marked it meanwhile: the caller rolls back
    return _view(row)


def marked_deletions(session: Session) -> list[DeletionView]:
    """Deletions marked and not finished (a sweep, or a node that died during one, left them)."""
    return [_view(r) for r in session.scalars(select(Deletion).where(Deletion.state == "marked").order_by(Deletion.id))]


def marked_paths(session: Session) -> set[str]:
    """The archive paths of instances whose deletion is under way (``check`` leaves them be)."""
    paths: set[str] = set()
    for (listed,) in session.execute(select(Deletion.paths).where(Deletion.state == "marked")):
        paths.update(listed or ())
    return paths


def finish_deletion(session: Session, deletion_id: int, now: datetime | None = None) -> bool:
    """After its files are gone: remove the rows of the marked instances, then the study's
    empty series, then the study itself (with its jobs and deliveries) if nothing of it is
    left and no job of it is busy. False if the deletion was already finished."""
    now = now or utcnow()
    row = session.get(Deletion, deletion_id)
    if row is None or row.state != "marked":
        return False
    study_id = session.scalar(select(Study.id).where(Study.study_uid == row.study_uid))
    study = _lock_study(session, study_id) if study_id is not None else None  # an arrival commits first, or waits
    ids = list(row.instance_ids or ())
    for start in range(0, len(ids), 1000):  # bounded IN lists, whatever the study's size
        session.execute(delete(Instance).where(Instance.id.in_(ids[start:start + 1000])))
    if study is not None:
        empty = select(Series.id).where(Series.study_id == study.id,
                                        ~select(Instance.id).where(Instance.series_id == Series.id).exists())
        session.execute(delete(Series).where(Series.id.in_(empty.scalar_subquery())))
        left = session.scalar(select(func.count()).select_from(Series).where(Series.study_id == study.id)) or 0
        busy = session.scalar(select(func.count()).select_from(Job).where(Job.study_id == study.id, Job.state.in_(_BUSY)))
        if not left and not busy:
            jobs = select(Job.id).where(Job.study_id == study.id).scalar_subquery()
            session.execute(delete(Delivery).where(Delivery.job_id.in_(jobs)))
            session.execute(update(Job).where(Job.study_id == study.id).values(replay_of_id=None))
            session.execute(delete(Job).where(Job.study_id == study.id))
            session.execute(delete(Study).where(Study.id == study.id))
    row.state, row.finished_at = "done", now
    row.instance_ids, row.paths = [], []  # the record keeps the counts; the lists were for finishing it
    return True


def cancel_deletion(session: Session, deletion_id: int, why: str, now: datetime | None = None) -> bool:
    """A marked deletion none of whose files was removed yet, given up (the study was pinned or
    got new work meanwhile)."""
    row = session.get(Deletion, deletion_id)
    if row is None or row.state != "marked":
        return False
    row.state, row.finished_at = "cancelled", now or utcnow()
    row.detail = f"{row.detail}; cancelled: {why}"
    row.instance_ids, row.paths = [], []
    return True


def pin(session: Session, study_uid: str, by: str, reason: str, now: datetime | None = None) -> bool:
    """Keep ``study_uid`` from retention; False when no such study is archived."""
    now = now or utcnow()
    return bool(rowcount(session, update(Study).where(Study.study_uid == study_uid)
                         .values(pinned_at=now, pinned_by=by[:64], pin_reason=reason)))


def pinned(session: Session, study_uids: list[str]) -> set[str]:
    """Which of these studies are pinned now."""
    return set(session.scalars(select(Study.study_uid).where(Study.study_uid.in_(study_uids), Study.pinned_at.is_not(None))))


def release(session: Session, study_uid: str, by: str, now: datetime | None = None) -> bool:
    """An admin lets retention delete a study it keeps unanswered (a failed job nobody will
    rerun); False when no such study is archived."""
    return bool(rowcount(session, update(Study).where(Study.study_uid == study_uid)
                         .values(released_at=now or utcnow(), released_by=by[:64])))


def kept_unanswered(session: Session, limit: int = 100) -> list[tuple[str, str]]:
    """Studies retention keeps because they were never answered: (study UID, why), the why
    from the latest job (failed with its reason, cancelled, done with results unsent)."""
    rows = session.execute(select(Study.study_uid, Job.state, Job.reason, Job.id).join(Job, Job.id == _latest_job())
                           .where(_unkept(), Study.released_at.is_(None), _settled(), ~_answered())
                           .order_by(Study.id).limit(limit)).all()
    out = []
    for uid, state, reason, job_id in rows:
        why = {JobState.FAILED: f"job {job_id} failed: {reason or 'no reason recorded'}",
               JobState.CANCELLED: f"job {job_id} was cancelled: {reason or 'no reason recorded'}"}.get(
            state, f"job {job_id} done, its results not all sent")
        out.append((uid, why[:300]))
    return out


def has_outcome(session: Session, study_uid: str) -> bool:
    """Whether a pathology outcome is recorded for the study (retention keeps it, pinned or not)."""
    return session.scalar(select(Outcome.id).where(Outcome.study_uid == study_uid)) is not None


def unpin(session: Session, study_uid: str) -> bool:
    """Let retention consider ``study_uid`` again; False when no such study is archived."""
    return bool(rowcount(session, update(Study).where(Study.study_uid == study_uid)
                         .values(pinned_at=None, pinned_by=None, pin_reason=None)))


@dataclass(frozen=True)
class StudyCounts:
    studies: int
    pinned: int
    finished: int  # eligible now or later (finished, not pinned)
    busy: int  # waiting, queued, running or with results to send, or never answered
    size_bytes: int
    pinned_bytes: int
    finished_bytes: int
    unanswered: int = 0  # kept: the latest job failed or was cancelled, or its results were not sent


def study_counts(session: Session) -> StudyCounts:
    """How the archive's studies stand for retention (``archive usage``)."""
    sizes = dict(session.execute(select(Series.study_id, func.sum(Instance.size_bytes)).join(Instance)
                                 .group_by(Series.study_id)).all())
    pinned = set(session.scalars(select(Study.id).where(~_unkept())))  # pinned, or an outcome keeps it
    finished = set(session.scalars(select(Study.id).where(_unkept(), *_finished_conditions())))
    ids = set(session.scalars(select(Study.id)))
    size = {k: int(v or 0) for k, v in sizes.items()}
    has_job = select(Job.id).where(Job.study_id == Study.id).exists()
    unanswered = set(session.scalars(select(Study.id).where(_unkept(), Study.released_at.is_(None),
                                                            has_job, _settled(), ~_answered())))
    return StudyCounts(studies=len(ids), pinned=len(pinned), finished=len(finished), busy=len(ids - pinned - finished),
                       size_bytes=sum(size.values()), pinned_bytes=sum(size.get(i, 0) for i in pinned),
                       finished_bytes=sum(size.get(i, 0) for i in finished), unanswered=len(unanswered))


def deletion_totals(session: Session) -> dict[str, tuple[int, int, int]]:
    """Finished deletions by reason: (studies, instances, bytes)."""
    rows = session.execute(select(Deletion.reason, func.count(), func.sum(Deletion.instances), func.sum(Deletion.size_bytes))
                           .where(Deletion.state == "done").group_by(Deletion.reason))
    return {reason: (int(n), int(i or 0), int(b or 0)) for reason, n, i, b in rows}


def recent_deletions(session: Session, limit: int = 20) -> list[DeletionView]:
    return [_view(r) for r in session.scalars(select(Deletion).order_by(Deletion.id.desc()).limit(limit))]
