"""Shadow results: what the shadow bundle answered for a job's study (issue 28, item 3). A
shadow result is stored and shown, never delivered: it has no delivery rows, so nothing here
can reach PACS. Queries only."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from db.models import Job, JobState, ShadowResult, utcnow

__all__ = ["ShadowView", "record_shadow", "shadow_results", "backlog", "shadow_counts"]


@dataclass(frozen=True)
class ShadowView:
    id: int
    job_id: int
    model_id: int
    state: str
    reason: str | None
    result: dict[str, Any] | None
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "created_at": self.created_at.isoformat() + "Z"}


def _view(row: ShadowResult) -> ShadowView:
    return ShadowView(row.id, row.job_id, row.model_id, row.state, row.reason, row.result, row.created_at)


def record_shadow(session: Session, job_id: int, model_id: int, state: str, *, reason: str | None = None,
                  result: dict[str, Any] | None = None) -> ShadowView:
    """``state``: done (with ``result``), skipped or failed (with ``reason``)."""
    if state not in ("done", "skipped", "failed"):
        raise ValueError(f'Argument "state" must be done, skipped or failed, not {state!r}')
    row = ShadowResult(job_id=job_id, model_id=model_id, state=state, reason=reason, result=result, created_at=utcnow())
    session.add(row)
    session.flush()
    return _view(row)


def shadow_results(session: Session, job_id: int) -> list[ShadowView]:
    return [_view(r) for r in session.scalars(select(ShadowResult).where(ShadowResult.job_id == job_id)
                                              .order_by(ShadowResult.id))]


def backlog(session: Session) -> int:
    """Jobs queued now: the active results still waiting to be computed."""
    return int(session.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.QUEUED)) or 0)


def shadow_counts(session: Session) -> dict[tuple[int, str], int]:
    """Shadow results by (bundle, state): for ``/metrics`` (skipped under a backlog counted)."""
    rows = session.execute(select(ShadowResult.model_id, ShadowResult.state, func.count()).group_by(
        ShadowResult.model_id, ShadowResult.state))
    return {(model_id, state): int(n) for model_id, state, n in rows}
