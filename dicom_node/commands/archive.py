"""``egfr-node archive pin|unpin|release|usage|prune``: what retention may delete, and what it did.

``pin STUDY_UID...`` (or ``--cohort CSV``: every study of a training cohort) keeps studies
from retention; ``unpin`` lets it consider them again; ``release`` lets it delete a study it keeps because it
was never answered (its latest job failed or was cancelled); ``usage`` shows the disk against the
watermarks, the studies by how retention sees them, and the last deletions; ``prune`` runs
one retention sweep now (``--dry-run``: only lists what the age rule and the watermarks
would delete).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from dicom_node.commands._common import fail, with_runtime

import getpass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from db import retention as records
from db.models import utcnow
from pipeline.uids import check_uid
from dicom_node.retention import Retention

__all__ = ["pin_studies", "unpin_studies", "usage_lines", "prune_lines"]


def pin_studies(sessions: sessionmaker[Session], study_uids: list[str], reason: str, by: str | None = None) -> list[str]:
    """Pin each study; one line per study (pinned, or not archived here)."""
    by = by or getpass.getuser()
    lines = []
    with sessions.begin() as session:
        for uid in study_uids:
            uid = check_uid("StudyInstanceUID", uid)
            found = records.pin(session, uid, by, reason)
            lines.append(f"{uid}: pinned ({reason})" if found else f"{uid}: not in the archive")
    return lines


def unpin_studies(sessions: sessionmaker[Session], study_uids: list[str]) -> list[str]:
    lines = []
    with sessions.begin() as session:
        for uid in study_uids:
            uid = check_uid("StudyInstanceUID", uid)
            if not records.unpin(session, uid):
                lines.append(f"{uid}: not in the archive")
            elif records.has_outcome(session, uid):
                lines.append(f"{uid}: unpinned, and still kept: a pathology outcome is recorded for it")
            else:
                lines.append(f"{uid}: unpinned")
    return lines


def release_studies(sessions: sessionmaker[Session], study_uids: list[str], by: str | None = None) -> list[str]:
    """Let retention delete these studies although they were never answered; one line each."""
    by = by or getpass.getuser()
    lines = []
    with sessions.begin() as session:
        for uid in study_uids:
            uid = check_uid("StudyInstanceUID", uid)
            lines.append(f"{uid}: released (retention may delete it once nothing of it is busy)"
                         if records.release(session, uid, by) else f"{uid}: not in the archive")
    return lines


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def usage_lines(retention: Retention) -> list[str]:
    settings = retention.settings
    use = retention.disk_use()
    with retention.sessions() as session:
        counts = records.study_counts(session)
        totals = records.deletion_totals(session)
        recent = records.recent_deletions(session, 10)
        kept = records.kept_unanswered(session, 20)
    lines = [f"disk: {use.percent:.1f} % used ({_mib(use.used)} of {_mib(use.total)}, {_mib(use.free)} free); "
             f"watermarks: high {settings.high_watermark_percent:g} %, low {settings.low_watermark_percent:g} %; "
             f"free-space reserve {_mib(retention.archive.free_space_reserve_bytes)}",
             f"retention: {'on' if settings.enabled else 'off'}; by age: "
             + (f"{settings.keep_days:g} days after a study is finished" if settings.keep_days else "off")
             + f"; watermarks spare studies finished less than {settings.min_age_hours:g} h ago",
             f"studies: {counts.studies} ({_mib(counts.size_bytes)}): {counts.finished} finished and deletable "
             f"({_mib(counts.finished_bytes)}), {counts.pinned} pinned ({_mib(counts.pinned_bytes)}), "
             f"{counts.busy - counts.unanswered} in the queue or with results to send, {counts.unanswered} never "
             "answered (kept until a job succeeds or an admin runs archive release)"]
    lines += [f"  kept: {uid}: {why}" for uid, why in kept]
    for reason, (studies, instances, size) in sorted(totals.items()):
        lines.append(f"deleted ({reason}): {studies} studies, {instances} instances, {_mib(size)}")
    for d in recent:
        when = (d.finished_at or d.marked_at).isoformat(timespec="seconds")
        lines.append(f"  {when}Z {d.study_uid} {d.reason} {d.state}: {d.instances} instances, {_mib(d.size_bytes)}; {d.detail}")
    return lines


def prune_lines(retention: Retention, dry_run: bool) -> list[str]:
    settings = retention.settings
    if not dry_run:
        report = retention.sweep_once()
        lines = [f"finished {report.completed} deletions a stopped node left marked"] if report.completed else []
        lines += [f"deleted {d.study_uid} ({d.reason}): {d.instances} instances, {_mib(d.size_bytes)}" for d in report.deleted]
        lines.append(f"{len(report.deleted)} studies deleted, {_mib(report.freed_bytes)} freed")
        if report.above_high_watermark:
            lines.append("the disk is still above the high watermark: nothing else is deletable (see archive usage)")
        return lines
    now = utcnow()
    lines = []
    with retention.sessions() as session:
        if settings.keep_days:
            due = records.eligible_studies(session, now - timedelta(days=settings.keep_days), limit=1000)
            lines += [f"would delete {c.study_uid} (age): finished {c.finished_at.isoformat(timespec='seconds')}Z" for c in due]
        use = retention.disk_use()
        if use.percent > settings.high_watermark_percent:
            oldest = records.eligible_studies(session, now - timedelta(hours=settings.min_age_hours), limit=20)
            lines.append(f"disk {use.percent:.1f} % used, above the high watermark: the oldest finished studies go "
                         f"until {settings.low_watermark_percent:g} %, first: " + (", ".join(c.study_uid for c in oldest) or "none"))
    return lines or ["nothing to delete"]


def register(sub: Any) -> None:
    p = sub.add_parser("archive", help="retention: pin or unpin studies, disk usage, prune now")
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("pin", help="keep studies from retention (STUDY_UID..., or every study of --cohort CSV)")
    a.add_argument("study_uids", nargs="*")
    a.add_argument("--cohort", help="a training cohort CSV: pin each of its studies")
    a.add_argument("--reason", help="why (shown by archive usage); default: the cohort, or 'pinned by an admin'")
    a.set_defaults(run=run)
    a = actions.add_parser("unpin", help="let retention consider studies again")
    a.add_argument("study_uids", nargs="+")
    a.set_defaults(run=run)
    a = actions.add_parser("release", help="let retention delete studies it keeps because they were never answered")
    a.add_argument("study_uids", nargs="+")
    a.set_defaults(run=run)
    actions.add_parser("usage", help="the disk against the watermarks, studies by retention state, last deletions"
                       ).set_defaults(run=run)
    a = actions.add_parser("prune", help="run one retention sweep now")
    a.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    a.set_defaults(run=run)


def cohort_study_uids(csv_path: Path, archive_root: Path) -> list[str]:
    """The Study Instance UIDs of a training cohort CSV (read by the training package)."""
    from training.cohort import read_cohort

    return [entry.study_uid for entry in read_cohort(csv_path, archive_root).entries]


def run(args: argparse.Namespace) -> int:
    """``egfr-node archive pin|unpin STUDY_UID... | pin --cohort CSV | usage | prune [--dry-run]``."""

    def do(runtime: Any) -> int:
        retention = Retention(runtime.config.retention, runtime.sessions, runtime.archive)
        if args.action == "usage":
            lines = usage_lines(retention)
        elif args.action == "prune":
            lines = prune_lines(retention, args.dry_run)
        else:
            uids = list(args.study_uids)
            if args.action == "pin" and args.cohort:
                uids += cohort_study_uids(Path(args.cohort), runtime.archive.root)
            if not uids:
                return fail(f"archive {args.action}: name a STUDY_UID" + (" or --cohort CSV" if args.action == "pin" else ""))
            if args.action == "pin":
                reason = args.reason or (f"cohort {Path(args.cohort).name}" if args.cohort else "pinned by an admin")
                lines = pin_studies(runtime.sessions, uids, reason)
            elif args.action == "release":
                lines = release_studies(runtime.sessions, uids)
            else:
                lines = unpin_studies(runtime.sessions, uids)
        print("\n".join(lines))
        return 0

    def checked(runtime: Any) -> int:
        try:
            return do(runtime)
        except ValueError as exc:  # a bad UID, a cohort CSV that cannot be read: named in the message
            return fail(str(exc))

    return with_runtime(args, checked)
