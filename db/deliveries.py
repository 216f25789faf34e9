"""Deliveries: one result instance to one destination (DESIGN.md "States").

pending -> sent                first try succeeded
(sent)                         sent by the worker while its job ran (the SR before the card was
                               drawn), recorded sent with the job's result
pending|retrying -> retrying   a try failed; the next one waits ``backoff`` (doubling, jittered)
retrying -> failed             ``max_attempts`` tries failed; the last reason is kept

Every delivery row names an instance the node has already archived, so a retry re-sends
the same SOP Instance UID and PACS keeps one copy. A delivery is claimed for a try by
moving its ``next_attempt_at`` forward with a conditional update, so several workers never
send the same row at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Collection, Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from db.engine import rowcount
from db.instances import instance_path
from db.models import Delivery, DeliveryState, utcnow

__all__ = ["DeliveryView", "RetryPolicy", "create_deliveries", "claim_due", "mark_sent", "mark_failed_try",
           "deliveries_of_job"]

OPEN_STATES = (DeliveryState.PENDING, DeliveryState.RETRYING)


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    initial_backoff_seconds: float = 5.0
    max_backoff_seconds: float = 600.0
    jitter: float = 0.25

    def backoff(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Seconds before the next try after ``failed_attempts`` failures: initial x 2^(n-1),
        capped, times a uniform jitter in [1 - jitter, 1 + jitter] (no thundering herd)."""
        base = min(self.max_backoff_seconds, self.initial_backoff_seconds * 2.0 ** max(0, failed_attempts - 1))
        return base * (rng or random).uniform(1 - self.jitter, 1 + self.jitter)


@dataclass(frozen=True)
class DeliveryView:
    id: int
    job_id: int
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    sent_at: datetime | None
    path: str

    @classmethod
    def of(cls, delivery: Delivery, path: str) -> DeliveryView:
        return cls(delivery.id, delivery.job_id, delivery.sop_instance_uid, delivery.destination, delivery.state.value,
                   delivery.attempts, delivery.last_error, delivery.next_attempt_at, delivery.sent_at, path)

    def to_json(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("next_attempt_at", "sent_at"):
            out[key] = out[key].isoformat() + "Z" if out[key] else None
        return out


def create_deliveries(session: Session, job_id: int, sop_instance_uids: Sequence[str], destinations: Sequence[str],
                      now: datetime | None = None, sent: Collection[tuple[str, str]] = ()) -> list[int]:
    """One delivery per (instance, destination): pending and due now, or ``sent`` (one try, sent
    now) for the (instance, destination) pairs the worker sent while the job ran."""
    now = now or utcnow()
    rows = [Delivery(job_id=job_id, sop_instance_uid=uid, destination=name,
                     state=DeliveryState.SENT if done else DeliveryState.PENDING, attempts=int(done),
                     next_attempt_at=None if done else now, sent_at=now if done else None, created_at=now, updated_at=now)
            for name in destinations for uid in sop_instance_uids for done in [(uid, name) in sent]]
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def _get(session: Session, delivery_id: int) -> Delivery:
    delivery = session.get(Delivery, delivery_id)
    if delivery is None:
        raise LookupError(f"no delivery {delivery_id}")
    return delivery


def _path_of(session: Session, sop_instance_uid: str) -> str:
    return instance_path(session, sop_instance_uid) or ""


def claim_due(session: Session, lease_seconds: float, now: datetime | None = None, limit: int = 50) -> list[DeliveryView]:
    """Open deliveries due now, each pushed ``lease_seconds`` ahead so no other worker takes it
    while this one sends (a worker that dies mid-send leaves it due again after the lease)."""
    now = now or utcnow()
    due = session.execute(
        select(Delivery.id, Delivery.next_attempt_at)
        .where(Delivery.state.in_(OPEN_STATES), or_(Delivery.next_attempt_at.is_(None), Delivery.next_attempt_at <= now))
        .order_by(Delivery.next_attempt_at, Delivery.id)
        .limit(limit)
    ).all()
    claimed = []
    for delivery_id, due_at in due:
        moved = rowcount(
            session,
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.state.in_(OPEN_STATES),
                   Delivery.next_attempt_at.is_(None) if due_at is None else Delivery.next_attempt_at == due_at)
            .values(next_attempt_at=now + timedelta(seconds=lease_seconds), updated_at=now),
        )
        if moved:
            delivery = _get(session, delivery_id)
            claimed.append(DeliveryView.of(delivery, _path_of(session, delivery.sop_instance_uid)))
    return claimed


def mark_sent(session: Session, delivery_id: int, now: datetime | None = None) -> None:
    now = now or utcnow()
    session.execute(
        update(Delivery).where(Delivery.id == delivery_id)
        .values(state=DeliveryState.SENT, attempts=Delivery.attempts + 1, last_error=None, next_attempt_at=None,
                sent_at=now, updated_at=now)
    )


def mark_failed_try(session: Session, delivery_id: int, reason: str, policy: RetryPolicy,
                    now: datetime | None = None, rng: random.Random | None = None) -> DeliveryView:
    """Count a failed try: ``retrying`` with the next try after the backoff, or ``failed``."""
    now = now or utcnow()
    delivery = _get(session, delivery_id)
    delivery.attempts += 1
    delivery.last_error = reason[:1000]
    delivery.updated_at = now
    if delivery.attempts >= policy.max_attempts:
        delivery.state = DeliveryState.FAILED
        delivery.next_attempt_at = None
    else:
        delivery.state = DeliveryState.RETRYING
        delivery.next_attempt_at = now + timedelta(seconds=policy.backoff(delivery.attempts, rng))
    session.flush()
    return DeliveryView.of(delivery, _path_of(session, delivery.sop_instance_uid))


def deliveries_of_job(session: Session, job_id: int) -> list[DeliveryView]:
    rows = session.scalars(select(Delivery).where(Delivery.job_id == job_id).order_by(Delivery.id)).all()
    return [DeliveryView.of(row, _path_of(session, row.sop_instance_uid)) for row in rows]
