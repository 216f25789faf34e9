"""Retention: the worker deletes finished studies by age (``retention.keep_days``) and, when the
archive's file system is above ``high_watermark_percent``, the longest-finished ones until it
is at ``low_watermark_percent``. What "finished" means, pins and the deletion record are in
``db.retention``. Each deletion: the database first (marked, with its files), then the files,
then the rows; a sweep first completes what a killed node left marked.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db import retention as records
from db.models import utcnow
from dicom_node.store.archive import Archive
from dicom_node.config import RetentionSection

__all__ = ["Retention", "SweepReport", "DiskUse"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiskUse:
    total: int
    used: int
    free: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used / self.total if self.total else 0.0


@dataclass
class SweepReport:
    completed: int = 0  # deletions a previous sweep left marked, finished now
    deleted: list[records.DeletionView] = field(default_factory=list)
    #: the disk stayed above the high watermark with nothing eligible left (pinned or busy studies)
    above_high_watermark: bool = False

    @property
    def freed_bytes(self) -> int:
        return sum(d.size_bytes for d in self.deleted)


class Retention:
    #: how often "above the high watermark with nothing to delete" is logged while it lasts
    WARN_EVERY_SECONDS = 600.0

    def __init__(self, settings: RetentionSection, sessions: sessionmaker[Session], archive: Archive) -> None:
        self.settings = settings
        self.sessions = sessions
        self.archive = archive
        self._warned_at = -self.WARN_EVERY_SECONDS

    def disk_use(self) -> DiskUse:
        return DiskUse(*self.archive.disk_usage())

    def sweep_once(self, now: datetime | None = None) -> SweepReport:
        """Finish marked deletions; delete by age; delete for the watermarks."""
        now = now or utcnow()
        report = SweepReport()
        with self.sessions() as session:
            pending = records.marked_deletions(session)
        for deletion in pending:
            if self._resume(deletion, now):
                report.completed += 1
        if not self.settings.enabled:
            return report
        if self.settings.keep_days > 0:
            cutoff = now - timedelta(days=self.settings.keep_days)
            with self.sessions() as session:
                due = records.eligible_studies(session, cutoff, limit=1000)
            for candidate in due:
                detail = (f"finished {candidate.finished_at.isoformat(timespec='seconds')}Z, "
                          f"kept {self.settings.keep_days:g} days (retention.keep_days)")
                self._delete(candidate, "age", detail, now, report)
        use = self.disk_use()
        if use.percent > self.settings.high_watermark_percent:
            self._relieve(use, now, report)
        return report

    def _resume(self, deletion: records.DeletionView, now: datetime) -> bool:
        """A deletion a sweep left marked (another worker's under way, or a killed node's): if
        none of its files is gone yet and the study was pinned or got new work meanwhile, it
        is cancelled; else it is finished. Whether it was finished."""
        with self.sessions() as session:
            eligible = records.still_eligible(session, deletion.study_uid)
        untouched = all(self.archive.path(p).exists() for p in deletion.paths)
        if not eligible and untouched:
            with self.sessions.begin() as session:
                records.cancel_deletion(session, deletion.id, "pinned or given new work before a file was removed", now)
            log.warning("retention: deletion of study %s cancelled: pinned or given new work before a file was removed",
                        deletion.study_uid)
            return False
        log.warning("retention: finishing the deletion of study %s marked at %s", deletion.study_uid,
                    deletion.marked_at.isoformat(timespec="seconds"))
        return self._remove(deletion, now)

    def _relieve(self, use: DiskUse, now: datetime, report: SweepReport) -> None:
        """Delete the longest-finished eligible studies until the disk is at the low watermark,
        and in one sweep at most the bytes that takes (so space freed late, or data that is not
        the archive's, never empties the archive in one go)."""
        start = use.percent
        needed = use.used - int(use.total * self.settings.low_watermark_percent / 100)
        freed = 0
        cutoff = now - timedelta(hours=self.settings.min_age_hours)
        tried: set[int] = set()
        while use.percent > self.settings.low_watermark_percent and freed < needed:
            with self.sessions() as session:
                batch = [c for c in records.eligible_studies(session, cutoff, limit=20 + len(tried))
                         if c.study_id not in tried]
            if not batch:
                report.above_high_watermark = use.percent > self.settings.high_watermark_percent
                if time.monotonic() - self._warned_at < self.WARN_EVERY_SECONDS:
                    return
                self._warned_at = time.monotonic()
                log.warning("retention: the archive's disk is %.1f %% used (high watermark %g %%) and no finished study "
                            "older than %g h is left to delete (the rest is pinned, in the queue, or has results to "
                            "send)", use.percent, self.settings.high_watermark_percent, self.settings.min_age_hours)
                return
            for candidate in batch:
                tried.add(candidate.study_id)
                detail = (f"finished {candidate.finished_at.isoformat(timespec='seconds')}Z; disk {start:.1f} % used, "
                          f"above the high watermark {self.settings.high_watermark_percent:g} %, "
                          f"down to {self.settings.low_watermark_percent:g} %")
                deleted = self._delete(candidate, "watermark", detail, now, report)
                freed += deleted.size_bytes if deleted else 0
                use = self.disk_use()
                if use.percent <= self.settings.low_watermark_percent or freed >= needed:
                    return

    def _delete(self, candidate: records.Candidate, reason: str, detail: str, now: datetime,
                report: SweepReport) -> records.DeletionView | None:
        try:
            with self.sessions.begin() as session:
                deletion = records.mark_deletion(session, candidate, reason, detail, now)
        except IntegrityError:  # another worker's sweep marked it first
            return None
        if deletion is None or not self._remove(deletion, now):
            return None
        report.deleted.append(deletion)
        log.info("retention: deleted study %s (%s): %d instances, %.1f MiB; %s", deletion.study_uid, reason,
                 deletion.instances, deletion.size_bytes / 2**20, detail, extra={"study_uid": deletion.study_uid})
        return deletion

    def _remove(self, deletion: records.DeletionView, now: datetime) -> bool:
        """Files, then rows; an error is logged and the deletion stays marked for the next
        sweep, which goes on with the others. Whether it was finished."""
        try:
            self.archive.remove(deletion.paths)
            with self.sessions.begin() as session:
                records.finish_deletion(session, deletion.id, now)
        except (OSError, ValueError, SQLAlchemyError) as exc:
            log.error("retention: deletion of study %s not finished (%s: %s); the next sweep tries again",
                      deletion.study_uid, type(exc).__name__, exc)
            return False
        return True
