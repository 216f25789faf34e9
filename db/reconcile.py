"""What ``egfr-node check`` compares the archive with, and what its repairs change in the
database: the recorded instances' files and hashes, jobs whose lease ran out, and the rows
of instances whose file is gone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db.engine import rowcount
from db.models import Instance, Job, JobState, utcnow

__all__ = ["RecordedFile", "recorded_files", "stuck_jobs", "forget_instances"]


@dataclass(frozen=True)
class RecordedFile:
    instance_id: int
    sop_instance_uid: str
    path: str
    sha256: str
    size_bytes: int


def recorded_files(session: Session) -> list[RecordedFile]:
    rows = session.execute(select(Instance.id, Instance.sop_instance_uid, Instance.path, Instance.sha256,
                                  Instance.size_bytes).order_by(Instance.id))
    return [RecordedFile(*row) for row in rows]


def stuck_jobs(session: Session, now: datetime | None = None) -> list[tuple[int, str | None]]:
    """Running jobs whose lease ran out (their worker died): (job id, the lease's owner)."""
    now = now or utcnow()
    return list(session.execute(select(Job.id, Job.lease_owner).where(
        Job.state == JobState.RUNNING, Job.lease_expires_at < now).order_by(Job.id)).all())


def forget_instances(session: Session, instance_ids: list[int]) -> int:
    """Remove the rows of instances whose file is gone or was quarantined."""
    if not instance_ids:
        return 0
    return rowcount(session, delete(Instance).where(Instance.id.in_(instance_ids)))
