"""What ``/metrics`` reads from the database: jobs and deliveries by state, the stage timings
of the jobs done since a time, and whether the database answers at all. Queries only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from db.models import Delivery, Job, JobState

__all__ = ["DoneJob", "done_jobs_since", "count_by_state", "database_answers"]


@dataclass(frozen=True)
class DoneJob:
    id: int
    finished_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    result: dict[str, Any] | None


def done_jobs_since(session: Session, since: datetime) -> list[DoneJob]:
    """Jobs done at or after ``since``, with the times and result ``/metrics`` observes."""
    rows = session.execute(select(Job.id, Job.finished_at, Job.queued_at, Job.started_at, Job.result)
                           .where(Job.state == JobState.DONE, Job.finished_at >= since))
    return [DoneJob(*row) for row in rows]


def count_by_state(session: Session, table: str) -> dict[str, int]:
    """``job`` or ``delivery`` rows counted by state (states no row is in are left out)."""
    column = {"job": Job.state, "delivery": Delivery.state}[table]
    return {getattr(state, "value", str(state)): count
            for state, count in session.execute(select(column, func.count()).group_by(column))}


def database_answers(session: Session) -> bool:
    """True when the database runs a trivial query (any error: False)."""
    try:
        session.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
