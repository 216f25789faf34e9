"""Recording received instances: study, series and instance rows plus the study's waiting job.

Called by the SCP after the file is durable in the archive and before the success status
goes back. The common case (a new instance) is a handful of Core statements in one
transaction: upsert study, upsert series, insert instance, touch the study's active job.
They are compiled once per dialect and run on the pooled DBAPI connection: SQLAlchemy's
session and execution context cost more than SQLite running the statements (the record and
its commit took 0.95 ms per instance through a session, 0.55 ms this way, in
``tests/bench_ingest.py --stages``), and this runs once per received instance before its
status. Values still go through the column types' own bind processors,
and DBAPI errors come out as SQLAlchemy's, so nothing else sees a difference.
A SOP Instance UID seen before falls back to a comparison of content (duplicate or
conflict), in the ORM. Safe with several associations and processes: the unique SOP
Instance UID and the one-active-job-per-study index decide races.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, cast

from sqlalchemy import Engine, Table, bindparam, case, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.schema import ScalarElementColumnDefault

from db.engine import SQLITE_BEGIN, check_database_file
from db.models import ACTIVE_JOB_PREDICATE_SQL, Base, Deletion, Instance, Job, JobState, Series, Study, utcnow
from db.sop_classes import mask_kind_of, moves_queue

__all__ = ["InstanceRecord", "RecordOutcome", "record_instance", "prepare_recording", "find_instance", "ARRIVING_REASON",
           "StudyBeingDeleted", "SeriesOfAnotherStudy"]


class StudyBeingDeleted(RuntimeError):
    """A known instance of a study retention is deleting arrived again: acknowledging it as a
    duplicate would lose it with the study, so it is refused (the peer retries later, and the
    retry is stored afresh)."""


class SeriesOfAnotherStudy(ValueError):
    """The instance's Series Instance UID is recorded under another study: recording it would
    put the instance (and the study's mask or images) under the wrong study, so it is refused."""


log = logging.getLogger(__name__)

ARRIVING_REASON = "study still arriving"
#: The predicate of the partial unique index uq_job_active_per_study, word for word.
ACTIVE_JOB_PREDICATE = text(ACTIVE_JOB_PREDICATE_SQL)


@dataclass(frozen=True)
class InstanceRecord:
    """What the archive and the header say about one received instance (UIDs, no patient data)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    sha256: str
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    frame_of_reference_uid: str | None = None
    calling_aet: str = ""
    referenced_series_uids: tuple[str, ...] = field(default_factory=tuple)
    referenced_sop_uids: tuple[str, ...] = field(default_factory=tuple)
    #: "received" (a peer, ``egfr-node import``) or "node" (a result the node built).
    origin: str = "received"
    #: False for a retrospective import: archived for training, no job made.
    enqueue: bool = True
    #: "SEG", "RTSTRUCT", "OUTLINE" or None; a SEG or RTSTRUCT is one by its class when not given
    mask_kind: str | None = None

    def __post_init__(self) -> None:
        if self.mask_kind is None:
            object.__setattr__(self, "mask_kind", mask_kind_of(self.sop_class_uid))

    @property
    def moves_queue(self) -> bool:
        return self.enqueue and moves_queue(self.sop_class_uid, self.origin, self.mask_kind)


class RecordOutcome(str, enum.Enum):
    NEW = "new"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same content: idempotent
    CONFLICT = "conflict"  # same SOP Instance UID, different content: first copy kept


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).one_or_none()


def record_instance(
    sessions: sessionmaker[Session], record: InstanceRecord, now: datetime | None = None
) -> RecordOutcome:
    """Record ``record`` (committed when this returns); an image or mask restarts its study's quiet time.

    A new image or mask (``db.sop_classes``) makes sure the study has a waiting job (a
    queued job goes back to waiting: the study is still arriving); any other instance (an
    SR, a Secondary Capture, the node's own results) is recorded and moves nothing. A known
    SOP Instance UID changes nothing but the quiet time (same content, an image or mask
    received from a peer) or the instance's conflict count (other content; not for one of the
    node's own results sent back re-encoded, which is a duplicate).
    """
    now = now or utcnow()
    try:
        _insert_new(sessions.kw["bind"], record, now)
        return RecordOutcome.NEW
    except IntegrityError:
        pass  # the SOP Instance UID is known (or another association just recorded it)
    with sessions.begin() as session:
        existing = find_instance(session, record.sop_instance_uid)
        if existing is None:
            raise RuntimeError(f"instance {record.sop_instance_uid} violates a constraint but is not recorded")
        outcome = _compare(existing, record, now)
        session.flush()  # the study row is updated (locked) before the deletion record is read
        if session.scalar(select(Deletion.id).where(Deletion.study_uid == existing.series.study.study_uid,
                                                    Deletion.state == "marked").limit(1)) is not None:
            raise StudyBeingDeleted(f"study {existing.series.study.study_uid} is being deleted by retention: "
                                    f"instance {record.sop_instance_uid} refused, send it again later")
        return outcome


def _compare(existing: Instance, record: InstanceRecord, now: datetime) -> RecordOutcome:
    if moves_queue(existing.sop_class_uid, existing.origin, existing.mask_kind):
        study = existing.series.study
        study.last_received_at = max(study.last_received_at, now)
    if existing.sha256 == record.sha256:
        return RecordOutcome.DUPLICATE
    if existing.origin == "node" and existing.sop_class_uid == record.sop_class_uid:
        # One of the node's own results (SR, SEG, card) sent back by a PACS that re-encoded
        # it: the node's copy is the original; not a conflict, nothing to warn about.
        log.debug("own result %s received back re-encoded; the node's copy kept", record.sop_instance_uid,
                  extra={"sop_instance_uid": record.sop_instance_uid, "study_uid": record.study_uid})
        return RecordOutcome.DUPLICATE
    existing.conflict_count += 1
    existing.last_conflict_at = now
    log.warning(
        "SOP Instance UID %s arrived again with different content; first copy kept (conflict %d)",
        record.sop_instance_uid,
        existing.conflict_count,
        extra={"sop_instance_uid": record.sop_instance_uid, "study_uid": record.study_uid},
    )
    return RecordOutcome.CONFLICT


class _DriverStatement:
    """A Core statement compiled once for one dialect and run on a DBAPI cursor: its values
    pass through the bind processors of its columns' types (dates, JSON, enums stored as the
    ORM stores them), and the scalar Python-side defaults of columns it leaves out are filled."""

    def __init__(self, statement: Any, dialect: Dialect, column_keys: list[str] | None = None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        if not isinstance(compiled, SQLCompiler):  # a DDL or another kind of statement
            raise TypeError(f"{type(statement).__name__} does not compile to SQL with binds ({type(compiled).__name__})")
        self.compiled: SQLCompiler = compiled
        self.defaults: dict[str, Any] = {}
        for column in [*self.compiled.insert_prefetch, *self.compiled.update_prefetch]:
            default = column.default if column in self.compiled.insert_prefetch else column.onupdate
            if not isinstance(default, ScalarElementColumnDefault):
                raise TypeError(f"{column} needs a value the statement does not give (its default is not a constant)")
            self.defaults[column.key] = default.arg
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for name, bind in self.compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self.processors[name] = processor
        self.positions: list[str] | None = None
        if self.compiled.positional:
            if self.compiled.positiontup is None:
                raise TypeError(f"{type(statement).__name__} compiles to positional binds without their order")
            self.positions = list(self.compiled.positiontup)

    def execute(self, cursor: Any, params: dict[str, Any]) -> Any:
        if not params.keys() <= self.compiled.binds.keys():
            raise TypeError(f"values for no column of the statement: {sorted(params.keys() - self.compiled.binds.keys())}")
        values = self.compiled.construct_params({**self.defaults, **params})
        for name, processor in self.processors.items():
            if name in values:
                values[name] = processor(values[name])
        if self.positions is not None:
            cursor.execute(self.compiled.string, tuple(values[name] for name in self.positions))
        else:
            cursor.execute(self.compiled.string, values)
        return cursor


@dataclass(frozen=True)
class _Statements:
    """The new-instance statements, built once per dialect (SQLAlchemy's statement building
    costs more than SQLite running them); Core on tables, values bound per call."""

    begin: str | None  # what opens the transaction (SQLite: take the write lock at once)
    upsert_study: _DriverStatement
    upsert_study_quiet: _DriverStatement
    upsert_series: _DriverStatement
    insert_instance: _DriverStatement
    touch_job: _DriverStatement
    insert_job: _DriverStatement


_STATEMENTS: dict[str, _Statements] = {}
#: The instance columns ``_insert_statements`` gives values for (a value for any other is refused).
_INSTANCE_COLUMNS = [
    "sop_instance_uid", "sop_class_uid", "series_id", "transfer_syntax_uid", "path", "size_bytes", "sha256",
    "received_at", "calling_aet", "referenced_series_uids", "referenced_sop_uids", "conflict_count", "origin",
    "mask_kind",
]


def _statements(dialect: Dialect) -> _Statements:
    cached = _STATEMENTS.get(dialect.name)
    if cached is not None:
        return cached
    insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    study_t, series_t, instance_t, job_t = _table(Study), _table(Series), _table(Instance), _table(Job)
    new_study = insert(study_t).values(
        study_uid=bindparam("study_uid"), first_received_at=bindparam("now"), last_received_at=bindparam("now")
    )
    study = new_study.on_conflict_do_update(
        index_elements=[study_t.c.study_uid],
        set_={
            "last_received_at": case(
                (new_study.excluded.last_received_at > study_t.c.last_received_at, new_study.excluded.last_received_at),
                else_=study_t.c.last_received_at,
            )
        },
    ).returning(study_t.c.id)
    # For instances that do not move the queue: the study row exists, its quiet time stays.
    study_quiet = new_study.on_conflict_do_update(
        index_elements=[study_t.c.study_uid], set_={"last_received_at": study_t.c.last_received_at}
    ).returning(study_t.c.id)
    new_series = insert(series_t).values(
        series_uid=bindparam("series_uid"),
        study_id=bindparam("study_id"),
        modality=bindparam("modality"),
        series_number=bindparam("series_number"),
        series_description=bindparam("series_description"),
        frame_of_reference_uid=bindparam("frame_of_reference_uid"),
        last_received_at=bindparam("now"),
    )
    series = new_series.on_conflict_do_update(
        index_elements=[series_t.c.series_uid], set_={"last_received_at": new_series.excluded.last_received_at},
        where=series_t.c.study_id == new_series.excluded.study_id,  # a series of another study returns no row
    ).returning(series_t.c.id)
    touch_job = (
        update(job_t)
        .where(job_t.c.study_id == bindparam("job_study_id"), ACTIVE_JOB_PREDICATE)
        # A re-send waiting in the queue becomes a prediction: what it would re-send was made
        # before this instance arrived (a corrected mask, a new image) and is no longer the answer.
        .values(state=JobState.WAITING, reason=ARRIVING_REASON, updated_at=bindparam("now"), queued_at=None,
                resend_only=False, result=None, trigger="arrival")
    )
    insert_job = (
        insert(job_t)
        .values(study_id=bindparam("study_id"), state=JobState.WAITING, reason=ARRIVING_REASON, trigger="arrival",
                attempts=0, created_at=bindparam("now"), updated_at=bindparam("now"))
        .on_conflict_do_nothing(index_elements=[job_t.c.study_id], index_where=ACTIVE_JOB_PREDICATE)
    )
    statements = _Statements(
        begin=SQLITE_BEGIN if dialect.name == "sqlite" else None,
        upsert_study=_DriverStatement(study, dialect),
        upsert_study_quiet=_DriverStatement(study_quiet, dialect),
        upsert_series=_DriverStatement(series, dialect),
        insert_instance=_DriverStatement(insert(instance_t), dialect, _INSTANCE_COLUMNS),
        touch_job=_DriverStatement(touch_job, dialect),
        insert_job=_DriverStatement(insert_job, dialect),
    )
    _STATEMENTS[dialect.name] = statements
    return statements


def _table(model: type[Base]) -> Table:
    """The model's table (declarative types ``__table__`` as any FromClause; it is a Table)."""
    return cast(Table, model.__table__)


def prepare_recording(engine: Engine) -> None:
    """Compile the new-instance statements and open a pooled connection now, so the first
    instance received is recorded as fast as the next ones (raises when the database does
    not answer)."""
    _statements(engine.dialect)
    engine.raw_connection().close()


def _insert_new(engine: Engine, record: InstanceRecord, now: datetime) -> None:
    """The new-instance statements in one transaction on a pooled DBAPI connection,
    committed when this returns; a DBAPI error is raised as SQLAlchemy's (IntegrityError:
    the SOP Instance UID is known)."""
    dialect = engine.dialect
    sql = _statements(dialect)
    dbapi_error = dialect.loaded_dbapi.Error
    check_database_file(engine)  # a deleted SQLite file would swallow the row: 0xA701, not 0x0000
    try:
        connection = engine.raw_connection()  # the pool's connect raises the driver's own error
    except dbapi_error as exc:
        raise DBAPIError.instance(None, None, exc, dbapi_error, dialect=dialect) from exc
    try:
        cursor = connection.cursor()
        try:
            if sql.begin:
                cursor.execute(sql.begin)
            _insert_statements(cursor, sql, record, now)
            connection.commit()
        except BaseException:
            try:
                connection.rollback()
            except dbapi_error:
                connection.invalidate()  # the pool opens a new one next time
            raise
        finally:
            cursor.close()
    except dbapi_error as exc:
        raise DBAPIError.instance(None, None, exc, dbapi_error, dialect=dialect) from exc
    finally:
        connection.close()


def _insert_statements(cursor: Any, sql: _Statements, record: InstanceRecord, now: datetime) -> None:
    upsert_study = sql.upsert_study if record.moves_queue else sql.upsert_study_quiet
    study_id = upsert_study.execute(cursor, {"study_uid": record.study_uid, "now": now}).fetchone()[0]
    series_row = sql.upsert_series.execute(
        cursor,
        {
            "series_uid": record.series_uid,
            "study_id": study_id,
            "modality": record.modality,
            "series_number": record.series_number,
            "series_description": record.series_description[:64],
            "frame_of_reference_uid": record.frame_of_reference_uid,
            "now": now,
        },
    ).fetchone()
    if series_row is None:
        raise SeriesOfAnotherStudy(f"series {record.series_uid} is recorded under another study than "
                                   f"{record.study_uid}: instance {record.sop_instance_uid} refused")
    series_id = series_row[0]
    sql.insert_instance.execute(
        cursor,
        {
            "sop_instance_uid": record.sop_instance_uid,
            "sop_class_uid": record.sop_class_uid,
            "series_id": series_id,
            "transfer_syntax_uid": record.transfer_syntax_uid,
            "path": record.path,
            "size_bytes": record.size_bytes,
            "sha256": record.sha256,
            "received_at": now,
            "calling_aet": record.calling_aet,
            "referenced_series_uids": list(record.referenced_series_uids),
            "referenced_sop_uids": list(record.referenced_sop_uids),
            "conflict_count": 0,
            "origin": record.origin,
            "mask_kind": record.mask_kind,
        },
    )
    if not record.moves_queue:
        return
    # The study's waiting job now says "still arriving"; a queued one goes back to waiting
    # (the quiet time restarted); a study without an active job gets a waiting one.
    if not sql.touch_job.execute(cursor, {"job_study_id": study_id, "now": now}).rowcount:
        sql.insert_job.execute(cursor, {"study_id": study_id, "now": now})
