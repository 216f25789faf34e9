"""The console's audit trail: one row per administrator action (who, what, on what, when,
what came of it). Written in the same transaction as the action, so an action that happened
is never missing from it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.models import AuditEntry, utcnow

__all__ = ["AuditView", "record", "list_audit"]


@dataclass(frozen=True)
class AuditView:
    id: int
    at: datetime
    user: str
    action: str
    target: str
    outcome: str
    remote: str

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat() + "Z"}


def record(session: Session, user: str, action: str, target: str, outcome: str, remote: str = "",
           now: datetime | None = None) -> AuditView:
    entry = AuditEntry(at=now or utcnow(), user=user[:64], action=action[:32], target=target[:128],
                       outcome=outcome, remote=remote[:64])
    session.add(entry)
    session.flush()
    return _view(entry)


def list_audit(session: Session, limit: int = 200, offset: int = 0) -> list[AuditView]:
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    return [_view(entry) for entry in session.scalars(query)]


def _view(entry: AuditEntry) -> AuditView:
    return AuditView(entry.id, entry.at, entry.user, entry.action, entry.target, entry.outcome, entry.remote)
