"""Opening what a command needs from the configuration: engine, sessions, archive."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass

from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.engine import database_errors, make_engine, make_sessionmaker
from db.migrate import current_revision, head_revision
from dicom_node.store.archive import Archive, process_alive
from dicom_node.config import Config
from dicom_node.log_safety import LibraryRepeatFilter, LibraryValueFilter, OneLineFilter, SafeFormatter

__all__ = ["Runtime", "open_runtime", "SchemaOutOfDate", "configure_logging", "share_metrics_between_processes",
           "SHARED_METRICS_ENV"]

#: prometheus_client reads this when it is imported: a folder of per-process value files.
SHARED_METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema this version needs."""


@dataclass
class Runtime:
    config: Config
    engine: Engine
    sessions: sessionmaker[Session]
    archive: Archive

    def close(self) -> None:
        self.engine.dispose()


def open_runtime(config: Config, *, check_schema: bool = True) -> Runtime:
    url = make_url(config.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        raise SchemaOutOfDate(
            f"database {url.database} does not exist: run `egfr-node init` (or `egfr-node db upgrade`) "
            f"with this configuration ({config.source})"
        )
    with database_errors(config.database_url):
        engine = make_engine(config.database_url)
        current = current_revision(engine) if check_schema else None
    if check_schema:
        head = head_revision()
        if current != head:
            engine.dispose()
            raise SchemaOutOfDate(
                f"database {engine.url.render_as_string(hide_password=True)} is at schema "
                f"{current or 'none'}, this version needs {head}: run `egfr-node db upgrade`"
            )
    archive = Archive(
        config.storage.archive_path,
        free_space_reserve_bytes=config.storage.free_space_reserve_mb * 2**20,
        fsync=config.storage.fsync,
    )
    return Runtime(config, engine, make_sessionmaker(engine), archive)


def configure_logging(level: str) -> None:
    """Handlers are configured here only (by the CLI). Messages carry UIDs, never patient data.

    One format for everything, the node's and its libraries' (``SafeFormatter``: CR/LF in a
    message escaped, traceback lines fenced, so no peer text can start a forged line); Python
    warnings (pydicom's, highdicom's) go through it too instead of raw to stderr, with every
    value they quote withheld (``LibraryValueFilter``: a quoted value may be a patient's name).
    """
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter())
    handler.addFilter(LibraryRepeatFilter())
    handler.addFilter(LibraryValueFilter())  # a library's message may quote a patient's name: withheld
    handler.addFilter(OneLineFilter())  # the connection pool's tracebacks during a database outage
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
    # pynetdicom at INFO reports every PDU and (for C-FIND/MOVE) identifiers; keep warnings only.
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, logging.getLogger().level))
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def share_metrics_between_processes(config: Config) -> None:
    """With several receive processes, or STOW-RS served by the console's process, count in
    prometheus_client's multiprocess mode, in ``<data_dir>/.metrics/<pid>`` (emptied): called
    before prometheus_client is imported, by the process that starts the receive processes
    and the console (they inherit the setting), so the SCP's /metrics sums them all."""
    several = config.node.receive_processes > 1 or (config.web.enabled and config.web.stow_enabled)
    if not several or not config.monitoring.enabled or os.environ.get(SHARED_METRICS_ENV):
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess folder was set")
    shared = config.storage.data_path / ".metrics"
    for old in shared.glob("*"):  # left by nodes that ended (their pid names the folder)
        if not old.name.isdigit() or not process_alive(int(old.name)):
            shutil.rmtree(old, ignore_errors=True)
    folder = shared / str(os.getpid())
    folder.mkdir(parents=True)
    os.environ[SHARED_METRICS_ENV] = str(folder)
