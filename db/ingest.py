"""Recording received instances: study, series and instance rows plus the study's waiting job.

Called by the SCP after the file is durable in the archive and before the success status
goes back, in one transaction. Safe with several associations and processes at once: the
unique SOP Instance UID and the one-active-job-per-study index decide races.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.models import ACTIVE_JOB_STATES, Instance, Job, JobState, Series, Study, utcnow

__all__ = ["InstanceRecord", "RecordOutcome", "record_instance", "find_instance", "MASK_MODALITIES"]

log = logging.getLogger(__name__)

MASK_MODALITIES = ("SEG", "RTSTRUCT")
ARRIVING_REASON = "study still arriving"


@dataclass(frozen=True)
class InstanceRecord:
    """What the archive and the header say about one received instance (UIDs, no patient data)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    sha256: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    frame_of_reference_uid: str | None = None
    calling_aet: str = ""
    referenced_series_uids: tuple[str, ...] = field(default_factory=tuple)


class RecordOutcome(str, enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same content: idempotent
    CONFLICT = "conflict"  # same SOP Instance UID, different content: first copy kept


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).one_or_none()


def record_instance(session: Session, record: InstanceRecord, now: datetime | None = None) -> RecordOutcome:
    """Record ``record`` and mark its study as having just received something.

    The caller commits. A new instance restarts the study's quiet time and makes sure the
    study has a waiting job (a queued job goes back to waiting: the study is still arriving).
    """
    now = now or utcnow()
    existing = find_instance(session, record.sop_instance_uid)
    if existing is None:
        try:
            with session.begin_nested():
                return _insert(session, record, now)
        except IntegrityError:
            # Another association recorded the same SOP Instance UID a moment ago.
            existing = find_instance(session, record.sop_instance_uid)
            if existing is None:
                raise
    return _compare(session, existing, record, now)


def _compare(session: Session, existing: Instance, record: InstanceRecord, now: datetime) -> RecordOutcome:
    if existing.sha256 == record.sha256:
        existing.series.study.last_received_at = max(existing.series.study.last_received_at, now)
        return RecordOutcome.DUPLICATE
    existing.conflict_count += 1
    existing.last_conflict_at = now
    log.warning(
        "SOP Instance UID %s arrived again with different content; first copy kept (conflict %d)",
        record.sop_instance_uid,
        existing.conflict_count,
        extra={"sop_instance_uid": record.sop_instance_uid, "study_uid": record.study_uid},
    )
    return RecordOutcome.CONFLICT


def _insert(session: Session, record: InstanceRecord, now: datetime) -> RecordOutcome:
    study = _get_or_create_study(session, record.study_uid, now)
    series = _get_or_create_series(session, study, record, now)
    session.add(
        Instance(
            sop_instance_uid=record.sop_instance_uid,
            sop_class_uid=record.sop_class_uid,
            series=series,
            transfer_syntax_uid=record.transfer_syntax_uid,
            path=record.path,
            size_bytes=record.size_bytes,
            sha256=record.sha256,
            received_at=now,
            calling_aet=record.calling_aet,
            referenced_series_uids=list(record.referenced_series_uids),
        )
    )
    series.instance_count += 1
    series.last_received_at = now
    study.instance_count += 1
    study.last_received_at = max(study.last_received_at, now)
    session.flush()
    _touch_active_job(session, study, now)
    return RecordOutcome.NEW


def _get_or_create_study(session: Session, study_uid: str, now: datetime) -> Study:
    study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()
    if study is not None:
        return study
    try:
        with session.begin_nested():
            study = Study(study_uid=study_uid, first_received_at=now, last_received_at=now, instance_count=0)
            session.add(study)
            session.flush()
            return study
    except IntegrityError:
        return session.scalars(select(Study).where(Study.study_uid == study_uid)).one()


def _get_or_create_series(session: Session, study: Study, record: InstanceRecord, now: datetime) -> Series:
    series = session.scalars(select(Series).where(Series.series_uid == record.series_uid)).one_or_none()
    if series is not None:
        return series
    try:
        with session.begin_nested():
            series = Series(
                series_uid=record.series_uid,
                study=study,
                modality=record.modality,
                series_number=record.series_number,
                series_description=record.series_description[:64],
                frame_of_reference_uid=record.frame_of_reference_uid,
                instance_count=0,
                last_received_at=now,
            )
            session.add(series)
            session.flush()
            return series
    except IntegrityError:
        return session.scalars(select(Series).where(Series.series_uid == record.series_uid)).one()


def _touch_active_job(session: Session, study: Study, now: datetime) -> None:
    job = session.scalars(
        select(Job).where(Job.study_id == study.id, Job.state.in_(ACTIVE_JOB_STATES))
    ).one_or_none()
    if job is None:
        try:
            with session.begin_nested():
                session.add(
                    Job(study=study, state=JobState.WAITING, reason=ARRIVING_REASON, created_at=now, updated_at=now)
                )
                session.flush()
        except IntegrityError:
            pass  # another association made the study's waiting job
        return
    if job.state is JobState.QUEUED:
        log.info("study %s received more instances; job %d back to waiting", study.study_uid, job.id,
                 extra={"study_uid": study.study_uid, "job_id": job.id})
        job.queued_at = None
    job.state = JobState.WAITING
    job.reason = ARRIVING_REASON
    job.updated_at = now
