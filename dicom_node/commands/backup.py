"""``egfr-node backup DIR`` and ``egfr-node restore DIR``: a consistent copy of a running node.

Backup, while the node receives: first the database, with SQLite's online backup API (a
snapshot as of one transaction; a file copy of a WAL database can be torn), then every
archive file that snapshot records, copied and checked against its recorded sha256, with
``manifest.json`` listing them. Files archived after the snapshot are not in it, and nothing
it records is missing from the copy: PACS re-sends what came later, or a second backup has
it. The console users file goes along. On PostgreSQL the database is not copied here (the
README shows ``pg_dump``); the archive and its manifest are, from the live database.

Restore goes into an empty data folder only: the database file back, every file checked
against the manifest, then ``check`` runs and its report is printed.
"""

from __future__ import annotations

import argparse
from typing import Any

from dicom_node.commands._common import fail, load

import json
import shutil
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import make_url

from pipeline.uids import sha256_of
from dicom_node.config import Config

__all__ = ["BackupError", "backup_node", "restore_node", "MANIFEST"]

MANIFEST = "manifest.json"
DATABASE_FILE = "egfr-node.sqlite3"


class BackupError(RuntimeError):
    """A backup or restore that cannot be made as asked; one line naming what is wrong."""


@dataclass(frozen=True)
class BackupSummary:
    folder: Path
    files: int
    bytes: int
    database: str
    problems: tuple[str, ...]


def _sqlite_path(config: Config) -> Path | None:
    url = make_url(config.database_url)
    return Path(url.database) if url.get_backend_name() == "sqlite" and url.database else None


def _empty_or_absent(folder: Path, what: str) -> None:
    if folder.exists() and any(folder.iterdir()):
        raise BackupError(f"{what} {folder} is not empty")


def backup_node(config: Config, folder: Path) -> BackupSummary:
    from db.reconcile import recorded_files
    from dicom_node.store.open import open_runtime

    folder = Path(folder)
    _empty_or_absent(folder, "backup folder")
    folder.mkdir(parents=True, exist_ok=True)
    source_db = _sqlite_path(config)
    if source_db is not None:
        snapshot = folder / DATABASE_FILE
        with sqlite3.connect(f"file:{source_db}?mode=ro", uri=True) as live, sqlite3.connect(snapshot) as copy:
            live.backup(copy)  # one consistent snapshot, while writers go on
        live.close()
        copy.close()
        database = f"SQLite snapshot {snapshot.name} (online backup API)"
        from db.engine import make_engine, make_sessionmaker

        engine = make_engine(f"sqlite:///{snapshot}")
        try:
            with make_sessionmaker(engine)() as session:
                recorded = recorded_files(session)
        finally:
            engine.dispose()
    else:
        database = "PostgreSQL: not copied here; back it up with pg_dump (README)"
        runtime = open_runtime(config)
        try:
            with runtime.sessions() as session:
                recorded = recorded_files(session)
        finally:
            runtime.close()
    archive_root = config.storage.archive_path
    problems, entries, total = [], [], 0
    for row in recorded:
        source, target = archive_root / row.path, folder / "archive" / row.path
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copyfile(source, target)
        except FileNotFoundError:
            problems.append(f"{row.sop_instance_uid}: recorded, but its file {source} is missing")
            continue
        digest = sha256_of(target)
        if digest != row.sha256:
            problems.append(f"{row.sop_instance_uid}: its file's sha256 is not the recorded one")
        size = target.stat().st_size
        entries.append({"path": row.path, "sha256": digest, "size": size})
        total += size
    users = config.web_users_path
    if users.is_file():
        shutil.copyfile(users, folder / "web-users")
    (folder / MANIFEST).write_text(json.dumps({
        "created": datetime.now(timezone.utc).isoformat(), "database": database,
        "sqlite": DATABASE_FILE if source_db is not None else None, "files": entries, "problems": problems,
    }, indent=1), encoding="utf-8")
    return BackupSummary(folder, len(entries), total, database, tuple(problems))


def restore_node(config: Config, folder: Path) -> list[str]:
    """Restore the backup in ``folder`` into this config's (empty) data folder; the lines of
    the ``check`` that follows."""
    from dicom_node.check import check_node
    from dicom_node.store.open import open_runtime

    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BackupError(f"{folder / MANIFEST}: not a backup made by egfr-node backup ({type(exc).__name__})") from None
    target_db = _sqlite_path(config)
    archive_root = config.storage.archive_path
    if archive_root.exists() and any(p for p in archive_root.iterdir() if not p.name.startswith(".")):
        raise BackupError(f"archive {archive_root} is not empty: restore goes into an empty data folder")
    if manifest.get("sqlite"):
        if target_db is None:
            raise BackupError("the backup holds an SQLite database but database.url is not SQLite")
        if target_db.exists():
            raise BackupError(f"database {target_db} exists: restore goes into an empty data folder")
        target_db.parent.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(folder / manifest["sqlite"]) as snapshot, sqlite3.connect(target_db) as restored:
            snapshot.backup(restored)
        snapshot.close()
        restored.close()
    for entry in manifest["files"]:
        source, target = folder / "archive" / entry["path"], archive_root / entry["path"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        if sha256_of(target) != entry["sha256"]:
            raise BackupError(f"{source}: its sha256 is not the one in the manifest (the backup is damaged)")
    if (folder / "web-users").is_file() and not config.web_users_path.exists():
        shutil.copyfile(folder / "web-users", config.web_users_path)
    runtime = open_runtime(config)
    try:
        report = check_node(runtime.archive, runtime.sessions, quarantine=config.storage.data_path / "quarantine")
    finally:
        runtime.close()
    return [f"restored {len(manifest['files'])} files"
            + (f" and the database into {target_db}" if manifest.get("sqlite") else "")] + report.lines()


def register(sub: Any) -> None:
    p = sub.add_parser("backup", help="a consistent copy of the database and the archive, while the node runs")
    p.add_argument("folder")
    p.set_defaults(run=backup)
    p = sub.add_parser("restore", help="a backup back into an empty data folder, then check")
    p.add_argument("folder")
    p.set_defaults(run=restore)


def backup(args: argparse.Namespace) -> int:
    """``egfr-node backup DIR``: 1 when a file could not be copied whole."""
    try:
        summary = backup_node(load(args), Path(args.folder))
    except BackupError as exc:
        return fail(str(exc))
    print(f"backup in {summary.folder}: {summary.files} files ({summary.bytes / 2**20:.1f} MiB); database: {summary.database}")
    for line in summary.problems:
        print(f"problem: {line}")
    return 1 if summary.problems else 0


def restore(args: argparse.Namespace) -> int:
    """``egfr-node restore DIR``."""
    try:
        print("\n".join(restore_node(load(args), Path(args.folder))))
    except BackupError as exc:
        return fail(str(exc))
    return 0
