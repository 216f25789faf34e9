"""Opening the node's store from its configuration: the database engine and sessions (its
schema checked) and the archive, as one ``Runtime`` every process of the node (the commands,
the SCP's receive processes, the console) opens and closes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.engine import database_errors, make_engine, make_sessionmaker
from db.migrate import current_revision, head_revision
from dicom_node.config import Config
from dicom_node.store.archive import Archive

__all__ = ["Runtime", "open_runtime", "SchemaOutOfDate"]


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
