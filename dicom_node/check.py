"""Do the archive and the database agree? (``egfr-node check [--repair]``, and the quick part
when the SCP starts.)

Found: files without a row (a crash between the link and the commit, a folder copied in by
hand), rows without a file (a folder deleted by hand, a partial restore), files whose sha256
is not the recorded one (a changed byte), temporary files left in ``.incoming`` by dead
writers, and running jobs whose lease ran out (their worker died).

``--repair`` fixes what it safely can: a file without a row goes through the SCP's checks and
intake again (recorded as received, no job); one that fails them, and a file whose bytes
changed, is moved to ``<data_dir>/quarantine/`` with its row forgotten; a row whose file is
gone is forgotten (the report names each UID: restore them from a backup to have them
back); stale temporary files are removed; stuck jobs go back to the queue (or fail after
``worker.max_attempts``). What it could not repair it says. Instances of a study retention is
deleting (marked, its files going) are counted apart: the next retention sweep finishes them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from db.queue import sweep_expired_leases
from db.reconcile import RecordedFile, forget_instances, recorded_files, stuck_jobs
from db.retention import marked_paths
from dicom_node.store.archive import Archive
from pipeline.uids import sha256_of

__all__ = ["CheckReport", "check_node"]


@dataclass
class CheckReport:
    files: int = 0
    rows: int = 0
    without_row: list[str] = field(default_factory=list)
    without_file: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    temporary: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)
    #: rows whose file is gone because retention is deleting their study (finished at its next sweep)
    deleting: int = 0

    @property
    def clean(self) -> bool:
        return not (self.without_row or self.without_file or self.changed or self.temporary or self.stuck)

    def lines(self, examples: int = 5) -> list[str]:
        out = [f"{self.files} files in the archive, {self.rows} instance rows in the database"]
        for label, items in (("files without a row", self.without_row), ("rows whose file is missing", self.without_file),
                             ("files whose sha256 is not the recorded one", self.changed),
                             ("stale temporary files in .incoming", self.temporary),
                             ("running jobs whose lease ran out", self.stuck)):
            if items:
                more = len(items) - examples
                out.append(f"{len(items)} {label}: " + ", ".join(items[:examples]) + (f" and {more} more" if more > 0 else ""))
        if self.deleting:
            out.append(f"{self.deleting} instances of studies retention is deleting (its next sweep finishes them)")
        out += [f"repaired: {line}" for line in self.repaired]
        out += [f"left: {line}" for line in self.left]
        if self.clean and not self.repaired:
            out.append("archive and database agree")
        return out


def check_node(archive: Archive, sessions: sessionmaker[Session], *, quarantine: Path, repair: bool = False,
               max_attempts: int = 3, max_instance_bytes: int = 1024 * 2**20, hash_files: bool = True) -> CheckReport:
    """Compare the archive with the database (every file hashed unless ``hash_files`` is
    False: the SCP's quick check at start); with ``repair``, fix what can be fixed safely
    (module docstring). A running node may link or delete files meanwhile: what looks
    missing or unrecorded is looked up again before it is reported."""
    report = CheckReport()
    with sessions() as session:
        recorded = recorded_files(session)
        stuck = stuck_jobs(session)
        deleting = marked_paths(session)
    on_disk = set(archive.files())
    report.files, report.rows = len(on_disk), len(recorded)
    by_path = {r.path: r for r in recorded}
    report.without_row = sorted(on_disk - set(by_path))
    missing = [r for r in recorded if r.path not in on_disk and r.path not in deleting]
    report.deleting = sum(1 for r in recorded if r.path in deleting)
    report.without_file = [r.sop_instance_uid for r in missing]
    if report.without_row or missing:  # files linked or rows removed while we looked
        with sessions() as session:
            now_recorded = {r.path for r in recorded_files(session)}
            deleting |= marked_paths(session)
        report.without_row = [p for p in report.without_row if p not in now_recorded and archive.path(p).exists()]
        missing = [r for r in missing if r.path in now_recorded and r.path not in deleting
                   and not archive.path(r.path).exists()]
        report.without_file = [r.sop_instance_uid for r in missing]
    changed = [r for r in recorded if hash_files and r.path in on_disk and sha256_of(archive.path(r.path)) != r.sha256]
    report.changed = [r.sop_instance_uid for r in changed]
    stale = archive.stale_temporary_files()
    report.temporary = [t.name for t in stale]
    report.stuck = [f"job {job_id} ({owner or 'no owner'})" for job_id, owner in stuck]
    if repair:
        _repair(report, archive, sessions, quarantine, missing, changed, stale, max_attempts, max_instance_bytes)
    return report


def _quarantine(archive: Archive, relative: str, quarantine: Path) -> Path:
    target = quarantine / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(archive.path(relative)), target)
    return target


def _repair(report: CheckReport, archive: Archive, sessions: sessionmaker[Session], quarantine: Path,
            missing: list[RecordedFile], changed: list[RecordedFile], stale: list[Path], max_attempts: int,
            max_instance_bytes: int) -> None:
    from dicom_node.store.import_files import import_file

    forgotten = []
    for relative in report.without_row:
        try:
            header, outcome = import_file(archive.path(relative), archive, sessions, max_instance_bytes=max_instance_bytes,
                                          data=archive.path(relative))
            expected = archive.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
            if expected != relative:  # a file under another name: its copy is recorded where it belongs
                _quarantine(archive, relative, quarantine)
                report.repaired.append(f"{relative}: recorded as {expected}, the misnamed file quarantined")
            else:
                report.repaired.append(f"{relative}: recorded ({outcome.value})")
        except Exception as exc:  # noqa: BLE001 - any reason a file cannot be taken in is reported
            target = _quarantine(archive, relative, quarantine)
            report.repaired.append(f"{relative}: not a file the node takes ({' '.join(str(exc).split())[:200]}); "
                                   f"quarantined to {target}")
    for row in changed:
        target = _quarantine(archive, row.path, quarantine)
        forgotten.append(row.instance_id)
        report.repaired.append(f"{row.sop_instance_uid}: bytes changed; quarantined to {target}, its row forgotten")
        report.left.append(f"{row.sop_instance_uid}: restore it from a backup, or have PACS send it again")
    for row in missing:
        forgotten.append(row.instance_id)
        report.repaired.append(f"{row.sop_instance_uid}: file missing; its row forgotten")
        report.left.append(f"{row.sop_instance_uid}: restore it from a backup, or have PACS send it again")
    with sessions.begin() as session:
        forget_instances(session, forgotten)
        swept = sweep_expired_leases(session, max_attempts)
    for view in swept:
        report.repaired.append(f"job {view.id}: lease ran out; {view.state}")
    for tmp in stale:
        with_size = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        report.repaired.append(f"{tmp.name}: stale temporary file removed ({with_size} bytes)")
