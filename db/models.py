"""SQLAlchemy 2.0 models: what was received (study, series, instance), the work on it (job,
delivery) and the model bundles the node can run (model).

Times are naive UTC (``utcnow()``) on every backend.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "Base",
    "Study",
    "Series",
    "Instance",
    "Job",
    "JobState",
    "Delivery",
    "DeliveryState",
    "Model",
    "AuditEntry",
    "Deletion",
    "Outcome",
    "OutcomeChange",
    "ShadowResult",
    "ConsoleSession",
    "LoginFailures",
    "utcnow",
    "ACTIVE_JOB_STATES",
]

UID = String(64)


def utcnow() -> datetime:
    """Now, as naive UTC (what every column stores)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class JobState(str, enum.Enum):
    """Job lifecycle (DESIGN.md "States")."""

    WAITING = "waiting"  # study still arriving, or no mask yet
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: States in which a study may hold at most one job (the queueing lock).
ACTIVE_JOB_STATES = (JobState.WAITING, JobState.QUEUED)
ACTIVE_JOB_PREDICATE_SQL = "state IN ('waiting', 'queued')"



class DeliveryState(str, enum.Enum):
    PENDING = "pending"
    SENT = "sent"
    RETRYING = "retrying"
    FAILED = "failed"


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    return Enum(cls, name=name, values_callable=lambda e: [m.value for m in e], native_enum=False, length=16)


class Study(Base):
    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    first_received_at: Mapped[datetime] = mapped_column(DateTime)
    last_received_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    #: Pinned by an admin or a cohort (``egfr-node archive pin``): retention never deletes it.
    pinned_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    pinned_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    pin_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: an admin let retention delete the study although it was never answered (archive release)
    released_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    released_by: Mapped[str | None] = mapped_column(String(64), nullable=True)

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    frame_of_reference_uid: Mapped[str | None] = mapped_column(UID, nullable=True)
    last_received_at: Mapped[datetime] = mapped_column(DateTime)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", order_by="Instance.id")


class Instance(Base):
    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    #: Path relative to the archive root: <study>/<series>/<sop>.dcm
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime)
    calling_aet: Mapped[str] = mapped_column(String(16), default="")
    #: Series UIDs a mask (SEG/RTSTRUCT) references; empty for images.
    referenced_series_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: SOP Instance UIDs of the images a mask references (for masks that name no series).
    referenced_sop_uids: Mapped[list[str]] = mapped_column(JSON, default=list)
    #: Times the same SOP Instance UID arrived again with different content (first copy kept).
    conflict_count: Mapped[int] = mapped_column(Integer, default=0)
    last_conflict_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: received (from a peer or ``egfr-node import``) | node (a result the node built: SR, SEG, card).
    #: The node's own instances are never pipeline input and never move the queue.
    origin: Mapped[str] = mapped_column(String(8), default="received", server_default="received")
    #: SEG | RTSTRUCT | OUTLINE (an SR whose content outlines a lesion) | None: what is a lesion
    #: mask, by class and content (``db.sop_classes.mask_kind_of``), decided once when received.
    mask_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        # The queueing lock: at most one waiting or queued job per study.
        Index(
            "uq_job_active_per_study",
            "study_id",
            unique=True,
            sqlite_where=text(ACTIVE_JOB_PREDICATE_SQL),
            postgresql_where=text(ACTIVE_JOB_PREDICATE_SQL),
        ),
        Index("ix_job_state_queued_at", "state", "queued_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    state: Mapped[JobState] = mapped_column(_enum(JobState, "job_state"), default=JobState.WAITING)
    #: Why the job is waiting, failed or was cancelled; one line, UIDs only.
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: arrival | replay
    trigger: Mapped[str] = mapped_column(String(16), default="arrival")
    replay_of_id: Mapped[int | None] = mapped_column(ForeignKey("job.id"), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: What the pipeline chose and produced (selection, probability, SR UID ...), JSON.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    #: The model bundle the job runs with, fixed when it is claimed (a bundle activated
    #: meanwhile is for the next jobs).
    model_id: Mapped[int | None] = mapped_column(ForeignKey("model.id"), nullable=True)
    #: A replay that re-sends the stored results rather than predicting again.
    resend_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    #: Which completion rule queued it (complete by content, or the quiet timer), in words.
    queued_because: Mapped[str | None] = mapped_column(Text, nullable=True)

    study: Mapped[Study] = relationship(back_populates="jobs")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="job", order_by="Delivery.id")


class Delivery(Base):
    """One SR to one destination (DESIGN.md: pending -> sent | retrying -> failed)."""

    __tablename__ = "delivery"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState, "delivery_state"), default=DeliveryState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)
    updated_at: Mapped[datetime] = mapped_column(DateTime)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)

    job: Mapped[Job] = relationship(back_populates="deliveries")

    __table_args__ = (Index("ix_delivery_state_next", "state", "next_attempt_at"),)


class Model(Base):
    """A model bundle the node can run; at most one is active, at most one is the shadow."""

    __tablename__ = "model"
    __table_args__ = (
        Index(
            "uq_model_one_active",
            "active",
            unique=True,
            sqlite_where=text("active = 1"),
            postgresql_where=text("active"),
        ),
        Index(
            "uq_model_one_shadow",
            "shadow",
            unique=True,
            sqlite_where=text("shadow = 1"),
            postgresql_where=text("shadow"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(64))
    device_uid: Mapped[str] = mapped_column(UID, unique=True)
    bundle_path: Mapped[str] = mapped_column(Text)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    #: the last activation: when, by whom, and the guards it overrode ("" or None: none)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    activated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    activated_despite: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: the candidate run on each new study after the active result was delivered, never sent
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class AuditEntry(Base):
    """What an administrator did from the console (replay, rerun, cancel, activate, echo,
    sign-in): who, what, on which job, study or bundle, when. UIDs and ids only, no patient data."""

    __tablename__ = "audit"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, index=True)
    user: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    #: what the action was on: "job 12", "study 1.2.3", "bundle 2", "destination pacs"
    target: Mapped[str] = mapped_column(String(128))
    #: what came of it, one line ("job 13 queued", "refused: job 12 is done")
    outcome: Mapped[str] = mapped_column(Text)
    remote: Mapped[str] = mapped_column(String(64), default="")



DELETION_MARKED_SQL = "state = 'marked'"


class Deletion(Base):
    """A study retention deletes: marked (with the files it covers) in one transaction, then
    the files are removed, then the rows, then ``done``. A node that dies in between finishes
    a ``marked`` deletion at its next sweep. The row stays as the record of what went, when
    and why; UIDs and counts only."""

    __tablename__ = "deletion"
    __table_args__ = (
        Index("uq_deletion_marked_per_study", "study_uid", unique=True,
              sqlite_where=text(DELETION_MARKED_SQL), postgresql_where=text(DELETION_MARKED_SQL)),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    #: age (retention.keep_days passed) | watermark (the disk above the high watermark)
    reason: Mapped[str] = mapped_column(String(16))
    #: one line: since when the study was finished, and the disk use that triggered it
    detail: Mapped[str] = mapped_column(Text)
    #: marked | done | cancelled (marked, then pinned or given new work before a file went)
    state: Mapped[str] = mapped_column(String(16), default="marked", index=True)
    marked_at: Mapped[datetime] = mapped_column(DateTime, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    #: the instances the deletion covers (ids and archive paths), fixed when it is marked (an
    #: instance that arrives later is not deleted with them); emptied once it is done
    instance_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    paths: Mapped[list[str]] = mapped_column(JSON, default=list)
    instances: Mapped[int] = mapped_column(Integer, default=0)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    jobs: Mapped[int] = mapped_column(Integer, default=0)


class Outcome(Base):
    """The EGFR status pathology found for a study (``db.outcomes``): one per study, its
    changes kept in ``outcome_change``."""

    __tablename__ = "outcome"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    #: positive | negative | not_assessable
    status: Mapped[str] = mapped_column(String(16))
    #: resection | biopsy | primary_only (the metastasis itself, or the primary tumour only)
    source: Mapped[str] = mapped_column(String(16))
    outcome_date: Mapped[date | None] = mapped_column(Date, nullable=True, index=True)
    #: exon19_deletion | L858R | other, for a positive status
    subtype: Mapped[str | None] = mapped_column(String(24), nullable=True)
    reference: Mapped[str | None] = mapped_column(Text, nullable=True)
    entered_by: Mapped[str] = mapped_column(String(64))
    entered_at: Mapped[datetime] = mapped_column(DateTime)
    updated_by: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(DateTime)


class OutcomeChange(Base):
    """One change of a study's outcome: who, when, from where, the value before and after."""

    __tablename__ = "outcome_change"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    at: Mapped[datetime] = mapped_column(DateTime)
    user: Mapped[str] = mapped_column(String(64))
    #: console | api | import
    via: Mapped[str] = mapped_column(String(16))
    old: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    new: Mapped[dict[str, Any]] = mapped_column(JSON)


class ShadowResult(Base):
    """What the shadow bundle answered for a job's study: stored and shown, never sent
    (``done``), or why it did not run (``skipped`` under a backlog, ``failed``)."""

    __tablename__ = "shadow_result"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("model.id"), index=True)
    #: done | skipped | failed
    state: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime)


class ConsoleSession(Base):
    """A signed-in console session, kept server-side so signing out, a password change or a
    user's removal ends it at once, and an idle one expires."""

    __tablename__ = "console_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: sha256 of the session's random id (the cookie carries the id; the database only its hash)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    #: a digest of the user's password hash when the session began (a new password ends it)
    password_stamp: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class LoginFailures(Base):
    """Failed sign-ins of one user or one source address (``key``: ``user:NAME`` or
    ``address:IP``) in the current window, and until when it is locked out."""

    __tablename__ = "login_failures"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[datetime] = mapped_column(DateTime)
    locked_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
