"""The queue on a real database: SQLite file and PostgreSQL (127.0.0.1:5432)."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from db.engine import make_engine, make_sessionmaker
from db.ingest import ARRIVING_REASON, InstanceRecord, RecordOutcome, SeriesOfAnotherStudy, record_instance
from db.migrate import current_revision, head_revision, upgrade
from db.models import Base, Instance, Job, JobState, Study
from db import queue, sop_classes

T0 = datetime(2026, 1, 1, 12, 0, 0)


@pytest.fixture
def sessions(any_db_url: str):
    upgrade(any_db_url)
    engine = make_engine(any_db_url)
    yield make_sessionmaker(engine)
    engine.dispose()


#: The SOP class each test modality stands for (what moves the queue is decided by SOP class).
SOP_CLASS_OF = {"MR": sop_classes.MR_IMAGE, "SEG": sop_classes.SEG, "RTSTRUCT": sop_classes.RTSTRUCT,
                "SR": "1.2.840.10008.5.1.4.1.1.88.34", "OT": "1.2.840.10008.5.1.4.1.1.7"}


def rec(study: str, series: str, sop: str, *, modality: str = "MR", refs: tuple[str, ...] = (),
        sop_refs: tuple[str, ...] = (), sha: str = "a" * 64, origin: str = "received") -> InstanceRecord:
    return InstanceRecord(
        study_uid=study, series_uid=series, sop_instance_uid=sop, sop_class_uid=SOP_CLASS_OF[modality], origin=origin,
        transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"{study}/{series}/{sop}.dcm", size_bytes=10, sha256=sha,
        modality=modality, referenced_series_uids=refs, referenced_sop_uids=sop_refs,
    )


def receive(sessions, record: InstanceRecord, at: datetime) -> RecordOutcome:
    return record_instance(sessions, record, at)


def jobs_of(sessions, study_uid: str) -> list[tuple[int, str]]:
    with sessions.begin() as s:
        return [(j.id, j.state.value) for j in s.scalars(select(Job).join(Study).where(Study.study_uid == study_uid).order_by(Job.id))]


def scan(sessions, at: datetime, stable: float = 30.0):
    with sessions.begin() as s:
        return queue.scan_waiting_jobs(s, stable, at)


def test_migrations_match_the_models(any_db_url: str) -> None:
    upgrade(any_db_url)
    engine = make_engine(any_db_url)
    try:
        assert current_revision(engine) == head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        assert diff == []
    finally:
        engine.dispose()


def test_duplicate_is_idempotent_and_conflict_is_counted(sessions) -> None:
    assert receive(sessions, rec("1.1", "1.1.1", "1.1.1.1"), T0) is RecordOutcome.NEW
    assert receive(sessions, rec("1.1", "1.1.1", "1.1.1.1"), T0) is RecordOutcome.DUPLICATE
    assert receive(sessions, rec("1.1", "1.1.1", "1.1.1.1", sha="b" * 64), T0) is RecordOutcome.CONFLICT
    with sessions.begin() as s:
        instances = s.scalars(select(Instance)).all()
        assert len(instances) == 1
        assert instances[0].sha256 == "a" * 64  # the first copy is kept
        assert instances[0].conflict_count == 1


def test_a_series_uid_of_another_study_is_refused_and_records_nothing(sessions) -> None:
    receive(sessions, rec("1.2", "1.2.1", "1.2.1.1"), T0)
    with pytest.raises(SeriesOfAnotherStudy, match="series 1.2.1 is recorded under another study than 2.2"):
        receive(sessions, rec("2.2", "1.2.1", "2.2.1.1", modality="SEG", refs=("1.2.1",)), T0)
    with sessions.begin() as s:  # nothing of it: no instance under study 1.2, no study 2.2, no job for it
        assert [i.sop_instance_uid for i in s.scalars(select(Instance))] == ["1.2.1.1"]
        assert [st.study_uid for st in s.scalars(select(Study))] == ["1.2"]
    assert jobs_of(sessions, "2.2") == []


def test_a_recorded_instance_reads_back_through_the_orm_as_it_was_given(sessions) -> None:
    # the record is written on the DBAPI connection: dates, JSON lists, enums and defaults
    # must be stored as the ORM stores them
    at = datetime(2026, 11, 30, 20, 0, 0, 123456)
    record = rec("1.5", "1.5.1", "1.5.1.1", modality="SEG", refs=("1.5.9",), sop_refs=("1.5.9.1", "1.5.9.2"))
    assert receive(sessions, replace(record, series_number=7, series_description="é" * 70), at) is RecordOutcome.NEW
    with sessions.begin() as s:
        instance = s.scalars(select(Instance)).one()
        assert (instance.received_at, instance.referenced_series_uids, instance.referenced_sop_uids) == (
            at, ["1.5.9"], ["1.5.9.1", "1.5.9.2"])
        assert (instance.conflict_count, instance.last_conflict_at, instance.origin) == (0, None, "received")
        series = instance.series
        assert (series.series_number, series.series_description, series.last_received_at) == (7, "é" * 64, at)
        assert (series.study.first_received_at, series.study.last_received_at) == (at, at)
        job = s.scalars(select(Job)).one()
        assert (job.state, job.reason, job.trigger, job.attempts, job.resend_only) == (
            JobState.WAITING, ARRIVING_REASON, "arrival", 0, False)
        assert (job.created_at, job.updated_at, job.queued_at) == (at, at, None)


def test_a_failing_database_raises_its_error_and_commits_nothing_of_the_record(sessions) -> None:
    engine = sessions.kw["bind"]
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE instance RENAME TO instance_elsewhere"))
    try:
        with pytest.raises(SQLAlchemyError):  # what the SCP answers 0xA701 for
            receive(sessions, rec("1.6", "1.6.1", "1.6.1.1"), T0)
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE instance_elsewhere RENAME TO instance"))
    with sessions.begin() as s:  # the study and series upserted before the failure are rolled back
        assert s.scalars(select(Study)).all() == [] and s.scalars(select(Job)).all() == []
    assert receive(sessions, rec("1.6", "1.6.1", "1.6.1.1"), T0) is RecordOutcome.NEW


def test_study_waits_for_quiet_and_a_mask_then_queues(sessions) -> None:
    for i in range(3):
        receive(sessions, rec("2.1", "2.1.1", f"2.1.1.{i}"), T0 + timedelta(seconds=i))
    assert [s for _, s in jobs_of(sessions, "2.1")] == ["waiting"]
    # quiet but no mask: stays waiting and says so
    assert scan(sessions, T0 + timedelta(seconds=100)) == []
    with sessions.begin() as s:
        job = s.scalars(select(Job)).one()
        assert job.state is JobState.WAITING and job.reason == "no lesion mask (SEG, RTSTRUCT or an outline SR) in the study yet"
    # a mask referencing another series does not make it ready
    receive(sessions, rec("2.1", "2.1.9", "2.1.9.1", modality="SEG", refs=("9.9",)), T0 + timedelta(seconds=101))
    assert scan(sessions, T0 + timedelta(seconds=200)) == []
    with sessions.begin() as s:
        assert s.scalars(select(Job)).one().reason == "no mask references an MR series of the study"
    receive(sessions, rec("2.1", "2.1.8", "2.1.8.1", modality="SEG", refs=("2.1.1",)), T0 + timedelta(seconds=201))
    # not yet quiet: the quiet time restarted with the mask
    assert scan(sessions, T0 + timedelta(seconds=220)) == []
    with sessions.begin() as s:
        assert s.scalars(select(Job)).one().reason.startswith("study still arriving")
    queued = scan(sessions, T0 + timedelta(seconds=231))
    assert [j.state for j in queued] == ["queued"]
    assert [s for _, s in jobs_of(sessions, "2.1")] == ["queued"]


def test_a_mask_naming_only_its_source_images_makes_the_study_ready(sessions) -> None:
    receive(sessions, rec("2.7", "2.7.1", "2.7.1.1"), T0)
    receive(sessions, rec("2.7", "2.7.2", "2.7.2.1", modality="RTSTRUCT", sop_refs=("9.9.9",)), T0)
    assert scan(sessions, T0 + timedelta(seconds=60)) == []  # references an image not in the study
    receive(sessions, rec("2.7", "2.7.3", "2.7.3.1", modality="RTSTRUCT", sop_refs=("2.7.1.1",)), T0 + timedelta(seconds=61))
    assert [j.state for j in scan(sessions, T0 + timedelta(seconds=120))] == ["queued"]


def test_a_study_of_which_part_was_refused_waits_for_the_rest_the_mask_names(sessions) -> None:
    """Issue 29: 12 of 32 slices acknowledged (20 refused), the mask naming all 32: the study is
    quiet but not complete; it waits, saying how many images are missing, until they come."""
    slices = [f"5.1.1.{i}" for i in range(32)]
    for sop in slices[:12]:
        receive(sessions, rec("5.1", "5.1.1", sop), T0)
    receive(sessions, rec("5.1", "5.1.2", "5.1.2.1", modality="SEG", refs=("5.1.1",), sop_refs=tuple(slices)), T0)
    assert scan(sessions, T0 + timedelta(hours=2)) == []
    with sessions.begin() as s:
        job = s.scalars(select(Job).join(Study).where(Study.study_uid == "5.1")).one()
        assert job.state is JobState.WAITING
        assert job.reason.startswith("incomplete: 20 of the 32 images the mask references are not in the archive")
    for sop in slices[12:]:  # the PACS sends them again
        receive(sessions, rec("5.1", "5.1.1", sop), T0 + timedelta(hours=3))
    assert [j.state for j in scan(sessions, T0 + timedelta(hours=3, seconds=31))] == ["queued"]


def test_a_large_series_still_arriving_keeps_the_study_waiting(sessions) -> None:
    receive(sessions, rec("3.1", "3.1.1", "3.1.1.0"), T0)
    receive(sessions, rec("3.1", "3.1.2", "3.1.2.0", modality="RTSTRUCT", refs=("3.1.1",)), T0)
    for i in range(1, 10):  # one instance every 20 s, stable time 30 s
        receive(sessions, rec("3.1", "3.1.1", f"3.1.1.{i}"), T0 + timedelta(seconds=20 * i))
        assert scan(sessions, T0 + timedelta(seconds=20 * i + 19)) == []
    assert [j.state for j in scan(sessions, T0 + timedelta(seconds=20 * 9 + 30))] == ["queued"]


def test_arrival_while_queued_goes_back_to_waiting_and_after_done_makes_a_new_job(sessions) -> None:
    receive(sessions, rec("4.1", "4.1.1", "4.1.1.0"), T0)
    receive(sessions, rec("4.1", "4.1.2", "4.1.2.0", modality="SEG", refs=("4.1.1",)), T0)
    scan(sessions, T0 + timedelta(seconds=60))
    receive(sessions, rec("4.1", "4.1.1", "4.1.1.1"), T0 + timedelta(seconds=61))
    assert [s for _, s in jobs_of(sessions, "4.1")] == ["waiting"]  # one job, never two
    scan(sessions, T0 + timedelta(seconds=120))
    with sessions.begin() as s:
        job = queue.claim_next(s, "w1", 60, T0 + timedelta(seconds=121))
    with sessions.begin() as s:
        assert queue.finish_job(s, job.id, "w1", ok=True, now=T0 + timedelta(seconds=122))
    # a new series after the job ran makes a new job; the queue shows both
    receive(sessions, rec("4.1", "4.1.3", "4.1.3.0"), T0 + timedelta(seconds=130))
    assert [s for _, s in jobs_of(sessions, "4.1")] == ["done", "waiting"]


def test_one_active_job_per_study_is_enforced_by_the_database(sessions) -> None:
    receive(sessions, rec("5.1", "5.1.1", "5.1.1.0"), T0)
    with pytest.raises(IntegrityError):
        with sessions.begin() as s:
            study = s.scalars(select(Study)).one()
            s.add(Job(study=study, state=JobState.QUEUED, created_at=T0, updated_at=T0))


def _ready_study(sessions, n: int, at: datetime) -> None:
    receive(sessions, rec(f"6.{n}", f"6.{n}.1", f"6.{n}.1.0"), at)
    receive(sessions, rec(f"6.{n}", f"6.{n}.2", f"6.{n}.2.0", modality="SEG", refs=(f"6.{n}.1",)), at)


def test_lease_expiry_requeues_then_fails_after_max_attempts(sessions) -> None:
    _ready_study(sessions, 1, T0)
    scan(sessions, T0 + timedelta(seconds=60))
    now = T0 + timedelta(seconds=60)
    for attempt in (1, 2):
        with sessions.begin() as s:
            job = queue.claim_next(s, f"w{attempt}", 10, now)
            assert job.attempts == attempt
        with sessions.begin() as s:
            assert queue.renew_lease(s, job.id, f"w{attempt}", 10, now + timedelta(seconds=5))
        now += timedelta(seconds=16)
        with sessions.begin() as s:
            swept = queue.sweep_expired_leases(s, max_attempts=2, now=now)
        assert [j.state for j in swept] == (["queued"] if attempt == 1 else ["failed"])
    with sessions.begin() as s:
        job = s.get(Job, job.id)
        assert job.state is JobState.FAILED and "lease expired" in job.reason
        # the dead worker can no longer finish it
        assert not queue.finish_job(s, job.id, "w2", ok=True, now=now)


def test_replay_keeps_history_and_cancel(sessions) -> None:
    _ready_study(sessions, 2, T0)
    scan(sessions, T0 + timedelta(seconds=60))
    with sessions.begin() as s:
        first = queue.claim_next(s, "w", 60, T0 + timedelta(seconds=61))
        queue.finish_job(s, first.id, "w", ok=False, reason="no mask references an MR series", now=T0 + timedelta(seconds=62))
    with sessions.begin() as s:
        again, created = queue.replay(s, "6.2")
        assert created and again.state == "queued" and again.replay_of_id == first.id and again.trigger == "replay"
    with sessions.begin() as s:
        same, created = queue.replay(s, str(first.id))
        assert not created and same.id == again.id
    with sessions.begin() as s:
        assert queue.cancel(s, again.id).state == "cancelled"
    with sessions.begin() as s:
        with pytest.raises(queue.QueueError, match="only waiting or queued"):
            queue.cancel(s, first.id)
        with pytest.raises(queue.QueueError, match="no study 9.9.9"):
            queue.replay(s, "9.9.9")
        assert [j.state for j in queue.list_jobs(s)] == ["cancelled", "failed"]


def _done_with_results(sessions, n: int, at: datetime) -> int:
    _ready_study(sessions, n, at)
    scan(sessions, at + timedelta(seconds=60))
    with sessions.begin() as s:
        job = queue.claim_next(s, "w", 60, at + timedelta(seconds=61))
        assert queue.finish_job(s, job.id, "w", ok=True, result={"instances": [{"sop_instance_uid": "2.25.1"}]},
                                now=at + timedelta(seconds=62))
    return job.id


def test_a_mask_arriving_while_a_resend_is_queued_is_predicted_not_answered_with_the_old_result(sessions) -> None:
    first = _done_with_results(sessions, 3, T0)
    with sessions.begin() as s:
        resend, created = queue.replay(s, "6.3")
        assert created and resend.resend_only and resend.result == {"resend_of_job": first}
    # a corrected SEG arrives before the re-send ran: what the re-send would send is stale
    receive(sessions, rec("6.3", "6.3.3", "6.3.3.0", modality="SEG", refs=("6.3.1",)), T0 + timedelta(seconds=70))
    scan(sessions, T0 + timedelta(seconds=130))
    with sessions.begin() as s:
        job = queue.claim_next(s, "w", 60, T0 + timedelta(seconds=131))
        assert job.id == resend.id and not job.resend_only and job.result is None and job.trigger == "arrival"


def test_a_rerun_asked_for_while_a_resend_is_queued_turns_it_into_a_rerun(sessions) -> None:
    first = _done_with_results(sessions, 4, T0)
    with sessions.begin() as s:
        resend, _ = queue.replay(s, "6.4")
    with sessions.begin() as s:
        rerun, changed = queue.replay(s, "6.4", rerun=True)
        assert changed and rerun.id == resend.id and not rerun.resend_only and rerun.trigger == "replay"
        assert rerun.replay_of_id == first and rerun.result is None
    with sessions.begin() as s:  # asked again: nothing more to change
        same, changed = queue.replay(s, "6.4", rerun=True)
        assert not changed and same.id == resend.id


def test_a_newer_job_of_a_study_waits_while_its_older_job_runs(sessions) -> None:
    _ready_study(sessions, 5, T0)
    _ready_study(sessions, 6, T0)
    scan(sessions, T0 + timedelta(seconds=60))
    with sessions.begin() as s:
        first = queue.claim_next(s, "w1", 60, T0 + timedelta(seconds=61))
    assert first.study_uid == "6.5"
    # a corrected mask arrives while the job runs: a new job, which no other worker starts yet
    receive(sessions, rec("6.5", "6.5.3", "6.5.3.0", modality="SEG", refs=("6.5.1",)), T0 + timedelta(seconds=62))
    scan(sessions, T0 + timedelta(seconds=130))
    with sessions.begin() as s:
        other = queue.claim_next(s, "w2", 60, T0 + timedelta(seconds=131))
        assert other.study_uid == "6.6"  # another study's job is claimed meanwhile
        assert queue.claim_next(s, "w3", 60, T0 + timedelta(seconds=131)) is None
    with sessions.begin() as s:
        assert queue.finish_job(s, first.id, "w1", ok=True, now=T0 + timedelta(seconds=132))
    with sessions.begin() as s:
        newer = queue.claim_next(s, "w3", 60, T0 + timedelta(seconds=133))
    assert newer.study_uid == "6.5" and newer.id != first.id


def test_concurrent_workers_never_claim_the_same_job(sessions) -> None:
    for n in range(10, 22):
        _ready_study(sessions, n, T0)
    scan(sessions, T0 + timedelta(seconds=60))
    claimed: list[int] = []
    lock = threading.Lock()

    def work(worker: str) -> None:
        while True:
            with sessions.begin() as s:
                job = queue.claim_next(s, worker, 60)
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(claimed) == 12 and len(set(claimed)) == 12
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.RUNNING)) == 12


def test_reports_and_captures_are_archived_but_never_move_the_queue(sessions) -> None:
    receive(sessions, rec("4.1", "4.1.1", "4.1.1.1"), T0)
    receive(sessions, rec("4.1", "4.1.2", "4.1.2.1", modality="SEG", refs=("4.1.1",)), T0)
    queued = scan(sessions, T0 + timedelta(seconds=31))
    assert [j.state for j in queued] == ["queued"]
    # An SR and a Secondary Capture from a peer: recorded, the queued job stays queued.
    assert receive(sessions, rec("4.1", "4.1.3", "4.1.3.1", modality="SR"), T0 + timedelta(seconds=40)) is RecordOutcome.NEW
    receive(sessions, rec("4.1", "4.1.4", "4.1.4.1", modality="OT"), T0 + timedelta(seconds=41))
    assert [s for _, s in jobs_of(sessions, "4.1")] == ["queued"]
    with sessions.begin() as s:
        assert s.scalars(select(Study).where(Study.study_uid == "4.1")).one().last_received_at == T0
        assert s.scalar(select(Instance.id).where(Instance.sop_instance_uid == "4.1.3.1")) is not None


def test_the_nodes_own_results_never_move_the_queue_even_when_sent_back(sessions) -> None:
    receive(sessions, rec("5.1", "5.1.1", "5.1.1.1"), T0)
    receive(sessions, rec("5.1", "5.1.2", "5.1.2.1", modality="SEG", refs=("5.1.1",)), T0)
    [job] = scan(sessions, T0 + timedelta(seconds=31))
    with sessions.begin() as s:
        claimed = queue.claim_next(s, "w1", 60, T0 + timedelta(seconds=32))
        assert queue.finish_job(s, claimed.id, "w1", ok=True, now=T0 + timedelta(seconds=33))
    # The node archives its SR and the SEG it derived (a SEG: a mask class) as its own ...
    for sop, modality in (("5.1.8.1", "SR"), ("5.1.9.1", "SEG")):
        record = rec("5.1", sop.rsplit(".", 1)[0], sop, modality=modality, refs=("5.1.1",), origin="node")
        assert receive(sessions, record, T0 + timedelta(seconds=34)) is RecordOutcome.NEW
    assert [s for _, s in jobs_of(sessions, "5.1")] == ["done"]
    # ... and PACS routes both back: duplicates of the node's own instances, nothing moves.
    for sop, modality in (("5.1.8.1", "SR"), ("5.1.9.1", "SEG")):
        back = rec("5.1", sop.rsplit(".", 1)[0], sop, modality=modality, refs=("5.1.1",))
        assert receive(sessions, back, T0 + timedelta(seconds=50)) is RecordOutcome.DUPLICATE
    assert [s for _, s in jobs_of(sessions, "5.1")] == ["done"]
    assert scan(sessions, T0 + timedelta(seconds=200)) == []
    # A new image series from a peer does make a new job.
    receive(sessions, rec("5.1", "5.1.3", "5.1.3.1"), T0 + timedelta(seconds=300))
    assert [s for _, s in jobs_of(sessions, "5.1")] == ["done", "waiting"]


def test_a_study_complete_by_its_content_is_queued_after_a_short_settle_not_the_timer(sessions) -> None:
    """Issue 30 item 1: the mask names its images; once they are all in and nothing arrived
    for the settle (2 s) the job is queued, without the 30 s quiet timer, and says why; the mask
    arriving first waits for its images; a mask naming no images still waits for the timer."""
    slices = [f"6.1.1.{i}" for i in range(5)]
    receive(sessions, rec("6.1", "6.1.2", "6.1.2.1", modality="SEG", refs=("6.1.1",), sop_refs=tuple(slices)), T0)
    for i, sop in enumerate(slices[:4]):
        receive(sessions, rec("6.1", "6.1.1", sop), T0 + timedelta(seconds=i))
    with sessions.begin() as s:
        assert queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=10), content_settle_seconds=2.0) == []
        assert s.scalars(select(Job)).one().reason.startswith("incomplete: 1 of the 5 images")
        assert queue.studies_complete_by_content(s, 30.0, T0 + timedelta(seconds=10)) == []  # one image short
    receive(sessions, rec("6.1", "6.1.1", slices[4]), T0 + timedelta(seconds=11))
    with sessions.begin() as s:
        assert queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=12), content_settle_seconds=2.0) == []  # settling
        # complete, still settling: what the worker fits N4 for at the mask's arrival; not once long quiet
        [complete] = queue.studies_complete_by_content(s, 3.0, T0 + timedelta(seconds=12))
        assert (complete.study_uid, complete.series_uids) == ("6.1", ("6.1.1",))
        assert queue.studies_complete_by_content(s, 3.0, T0 + timedelta(seconds=15)) == []
    with sessions.begin() as s:
        [job] = queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=13.5), content_settle_seconds=2.0)
    assert job.state == "queued" and job.queued_because.startswith("complete by content: the mask and the 5 images")
    # a mask that names no images: the quiet timer
    receive(sessions, rec("6.2", "6.2.1", "6.2.1.0"), T0)
    receive(sessions, rec("6.2", "6.2.2", "6.2.2.1", modality="RTSTRUCT", refs=("6.2.1",)), T0)
    with sessions.begin() as s:
        assert queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=5), content_settle_seconds=2.0) == []
    with sessions.begin() as s:
        [job] = queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=31), content_settle_seconds=2.0)
    assert job.queued_because == "quiet for 30 s (the mask names no images)"


def test_a_mask_arriving_after_its_quiet_images_is_queued_at_the_next_scan(sessions) -> None:
    """The settle of the content rule is the quiet of the series the mask names, not of the
    study: a SEG drawn minutes after the scan is queued at once; another series still arriving
    keeps it waiting; the study waiting for its mask is listed for the bias field fit ahead."""
    slices = [f"6.3.1.{i}" for i in range(3)]
    for i, sop in enumerate(slices):
        receive(sessions, rec("6.3", "6.3.1", sop), T0 + timedelta(seconds=i))
    with sessions.begin() as s:
        assert queue.studies_awaiting_mask(s, 2.0, T0 + timedelta(seconds=3)) == []  # not quiet 2 s yet
        [awaiting] = queue.studies_awaiting_mask(s, 2.0, T0 + timedelta(seconds=5))
        assert awaiting.study_uid == "6.3" and awaiting.last_received_at == T0 + timedelta(seconds=2)
        assert queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=5), content_settle_seconds=2.0) == []
        assert s.scalars(select(Job)).one().reason == queue.NO_MASK_YET
    mask_at = T0 + timedelta(seconds=300)
    receive(sessions, rec("6.3", "6.3.2", "6.3.2.1", modality="SEG", refs=("6.3.1",), sop_refs=tuple(slices)), mask_at)
    with sessions.begin() as s:
        assert queue.studies_awaiting_mask(s, 2.0, mask_at + timedelta(seconds=5)) == []  # the mask is in
        [job] = queue.scan_waiting_jobs(s, 30.0, mask_at + timedelta(seconds=0.1), content_settle_seconds=2.0)
    assert job.queued_because == "complete by content: the mask and the 3 images it names are in, their series quiet 2 s"

    # a second study: its images' series is still arriving when the mask comes
    receive(sessions, rec("6.4", "6.4.1", "6.4.1.0"), T0)
    receive(sessions, rec("6.4", "6.4.2", "6.4.2.1", modality="SEG", refs=("6.4.1",), sop_refs=("6.4.1.0",)), T0)
    receive(sessions, rec("6.4", "6.4.1", "6.4.1.1"), T0 + timedelta(seconds=9))  # not named, same series
    with sessions.begin() as s:
        assert queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=10), content_settle_seconds=2.0) == []
    with sessions.begin() as s:
        [job] = queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=11), content_settle_seconds=2.0)
    assert job.study_uid == "6.4"


def test_a_mask_alone_names_the_series_to_fetch_and_the_workers_note_joins_the_reason(sessions) -> None:
    """Issue 32: only the mask came. After the settle time the study is listed with the series
    its mask names (what a node with a source fetches), the worker's note is said after the
    reason, and once the images are in the study is queued and no longer wanted."""
    slices = [f"6.1.1.{i}" for i in range(4)]
    receive(sessions, rec("6.1", "6.1.2", "6.1.2.1", modality="SEG", refs=("6.1.1",), sop_refs=tuple(slices)), T0)
    with sessions.begin() as s:
        assert queue.studies_wanting_images(s, 5.0, T0 + timedelta(seconds=2)) == []  # still settling
        [wanting] = queue.studies_wanting_images(s, 5.0, T0 + timedelta(seconds=6))
    assert wanting.study_uid == "6.1" and wanting.series_uids == ("6.1.1",)
    with sessions.begin() as s:
        assert queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=6), content_settle_seconds=1.0,
                                       notes={"6.1": "fetching them from pacs (try 1)"}) == []
        job = s.scalars(select(Job).join(Study).where(Study.study_uid == "6.1")).one()
        assert job.reason == "no MR series in the study yet; fetching them from pacs (try 1)"
    for sop in slices:
        receive(sessions, rec("6.1", "6.1.1", sop), T0 + timedelta(seconds=7))
    with sessions.begin() as s:
        assert queue.studies_wanting_images(s, 5.0, T0 + timedelta(seconds=20)) == []
        [job] = queue.scan_waiting_jobs(s, 30.0, T0 + timedelta(seconds=20), content_settle_seconds=1.0)
    assert job.state == "queued" and "complete by content" in job.queued_because
