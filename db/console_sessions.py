"""The console's sessions, kept server-side, and failed sign-ins (issue 29 item 3).

A signed cookie alone cannot be taken back: after sign-out it still opened the API for the
rest of its 8 hours. Here a session is a row (the cookie carries a random id, the row its
sha256): signing out ends it, so does a password change (the row keeps a digest of the
password hash it began with) or the user's removal, an idle spell or its maximum age.

Failed sign-ins are counted per user and per source address. An attempt is counted before
the password is checked (and forgiven when it was right), so 20 guesses sent at once cannot
all be checked: past ``max_failures`` in a 15-minute window the user or address is locked
out, 60 s then doubling with each further try, up to an hour; ``egfr-node web unlock`` lifts
it. Queries only.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.engine import rowcount
from db.models import ConsoleSession, LoginFailures, utcnow

__all__ = ["start_session", "check_session", "end_session", "end_sessions_of", "Attempt", "reserve_attempt",
           "forgive", "unlock", "WINDOW", "MAX_LOCKOUT"]

#: Failures older than this (and not locked) are forgotten.
WINDOW = timedelta(minutes=15)
MAX_LOCKOUT = timedelta(hours=1)
#: last_seen_at is written at most this often (a refreshing page would write every request).
TOUCH_EVERY = timedelta(seconds=30)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def start_session(session: Session, user: str, password_stamp: str, now: datetime | None = None) -> str:
    """A new session of ``user``; returns its random id (for the cookie)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    session.add(ConsoleSession(token_sha256=_digest(token), user=user[:64], password_stamp=password_stamp,
                               created_at=now, last_seen_at=now))
    session.flush()
    return token


def check_session(session: Session, token: str | None, user: str, password_stamp: str | None, *, idle: timedelta,
                  max_age: timedelta, now: datetime | None = None) -> str | None:
    """None when the session of ``token`` is alive for ``user`` (its last use noted), else why
    not: it was ended, the user is gone (``password_stamp`` None) or has a new password, it
    was idle too long or is too old (then it is ended here)."""
    now = now or utcnow()
    if not token:
        return "no session"
    row = session.scalars(select(ConsoleSession).where(ConsoleSession.token_sha256 == _digest(token))).one_or_none()
    if row is None or row.user != user:
        return "no session"
    if row.ended_at is not None:
        return f"session ended ({row.end_reason})"
    why = ("user removed" if password_stamp is None else "password changed" if row.password_stamp != password_stamp
           else "idle" if now - row.last_seen_at > idle else "expired" if now - row.created_at > max_age else None)
    if why:
        row.ended_at, row.end_reason = now, why
        return f"session ended ({why})"
    if now - row.last_seen_at >= TOUCH_EVERY:
        row.last_seen_at = now
    return None


def end_session(session: Session, token: str | None, reason: str = "signed out", now: datetime | None = None) -> bool:
    if not token:
        return False
    row = session.scalars(select(ConsoleSession).where(ConsoleSession.token_sha256 == _digest(token))).one_or_none()
    if row is None or row.ended_at is not None:
        return False
    row.ended_at, row.end_reason = now or utcnow(), reason
    return True


def end_sessions_of(session: Session, user: str, reason: str, now: datetime | None = None) -> int:
    rows = session.scalars(select(ConsoleSession).where(ConsoleSession.user == user, ConsoleSession.ended_at.is_(None)))
    count = 0
    for row in rows:
        row.ended_at, row.end_reason, count = now or utcnow(), reason, count + 1
    return count


@dataclass(frozen=True)
class Attempt:
    """May this sign-in be checked? If not, until when the user or address is locked out, and
    which keys this attempt has just locked (for the audit)."""

    allowed: bool
    locked_until: datetime | None
    newly_locked: tuple[str, ...]


def _row(session: Session, key: str, now: datetime) -> LoginFailures:
    row = session.get(LoginFailures, key, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(LoginFailures(key=key, failures=0, first_at=now))
        except IntegrityError:  # another sign-in inserted it first
            pass
        row = session.get(LoginFailures, key, with_for_update=True, populate_existing=True)
    assert row is not None
    return row


def reserve_attempt(session: Session, keys: list[str], max_failures: int, lockout_seconds: int,
                    now: datetime | None = None) -> Attempt:
    """Count an attempt against each key before its password is checked; refused when a key is
    locked out, or this attempt is one too many (then the key is locked out)."""
    now = now or utcnow()
    locked_until: datetime | None = None
    newly: list[str] = []
    for key in sorted(keys):
        row = _row(session, key[:128], now)
        if row.locked_until is not None and row.locked_until > now:
            locked_until = max(locked_until or row.locked_until, row.locked_until)
        elif now - row.first_at > WINDOW:
            row.failures, row.first_at, row.locked_until = 0, now, None
        row.failures += 1
        if row.failures > max_failures and (row.locked_until is None or row.locked_until <= now):
            seconds = min(MAX_LOCKOUT.total_seconds(), lockout_seconds * 2 ** max(0, row.failures - max_failures - 1))
            row.locked_until = now + timedelta(seconds=seconds)
            locked_until = max(locked_until or row.locked_until, row.locked_until)
            newly.append(key)
    session.flush()
    return Attempt(locked_until is None, locked_until, tuple(newly))


def forgive(session: Session, keys: list[str]) -> None:
    """The password was right: the counted attempt and earlier failures of these keys are forgotten."""
    session.execute(delete(LoginFailures).where(LoginFailures.key.in_([k[:128] for k in keys])))


def unlock(session: Session, name: str) -> int:
    """Lift the lock-out of a user or an address (``name`` either); how many were lifted."""
    return rowcount(session, delete(LoginFailures).where(LoginFailures.key.in_([f"user:{name}", f"address:{name}"])))
