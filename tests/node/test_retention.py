"""Issue 18, item 1: retention deletes only finished studies (every job ended, the last one's
results sent), never a pinned one, by age and above the high watermark; a deletion killed
half-way is finished by the next sweep; ``check`` stays clean; every deletion is recorded
and counted in /metrics.

Studies go into a real archive and database through the SCP's intake (``import_file``), and
their jobs through the queue's own transitions (scan, claim, finish, deliveries), the ones
the worker makes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from db import deliveries, queue
from db.migrate import upgrade
from db.models import Deletion, Instance, Job, JobState, Series, Study, utcnow
from db.outcomes import OutcomeValue, record_outcome
from db.retention import eligible_studies, has_outcome, kept_unanswered, pin, release, study_counts, unpin
from dicom_node.cli import main as cli_main
from dicom_node.check import check_node
from dicom_node.store.import_files import import_file
from dicom_node.config import RetentionSection
from dicom_node.metrics import live_collector
from dicom_node.retention import Retention
from dicom_node.store.open import open_runtime
from dicom_node.receive.server import DicomNode
from tests.conftest import make_config
from tests.node.scu import store
from tests.dicom_factory import mask_for, mr_series, write_all


class Site:
    """A node's archive and database, with studies put in each state a study can be in."""

    def __init__(self, tmp: Path, *, data_dir: Path | None = None, database_url: str = "", **retention: object) -> None:
        self.tmp = tmp
        # The watermarks are off unless a test sets them: a test of deletion by age must not
        # depend on how full the disk of the machine running it is (CI's was 92.8 % once).
        retention = {"high_watermark_percent": 100.0, "low_watermark_percent": 99.9, **retention}
        self.config = replace(make_config(data_dir or tmp / "data", database_url),
                              retention=replace(RetentionSection(), **retention))
        upgrade(self.config.database_url)
        self.runtime = open_runtime(self.config)
        self.sessions, self.archive = self.runtime.sessions, self.runtime.archive
        self.retention = Retention(self.config.retention, self.sessions, self.archive)
        self.count = 0

    def study(self, images: int = 3, rows: int = 32) -> str:
        """A study (MR series + SEG) through intake, its job waiting."""
        self.count += 1
        series = mr_series(images, rows=rows, columns=rows, seed=self.count)
        folder = self.tmp / f"study-{self.count}"
        write_all([*series, mask_for(series)], folder)
        for path in sorted(folder.rglob("*.dcm")):
            import_file(path, self.archive, self.sessions, max_instance_bytes=2**30, queue=True)
        return str(series[0].StudyInstanceUID)

    def run(self, study_uid: str, *, ok: bool = True, at: datetime | None = None) -> int:
        """Queue, claim and finish the study's job as a worker does; its id."""
        at = at or utcnow()
        with self.sessions.begin() as session:  # the study arrived a minute before ``at`` (time passes)
            session.execute(update(Study).where(Study.study_uid == study_uid).values(
                first_received_at=at - timedelta(minutes=1), last_received_at=at - timedelta(minutes=1)))
            session.execute(update(Series).where(Series.study_id.in_(select(Study.id).where(
                Study.study_uid == study_uid))).values(last_received_at=at - timedelta(minutes=1)))
            queue.scan_waiting_jobs(session, 0.0, at + timedelta(seconds=1))
        with self.sessions.begin() as session:
            job = queue.claim_next(session, "w1", 600, at + timedelta(seconds=2))
            assert job is not None
            study = session.get(Job, job.id).study.study_uid
            assert study == study_uid, (study, study_uid)
            queue.finish_job(session, job.id, "w1", ok=ok, reason=None if ok else "no evidence of contrast",
                             result={"status": "negative"} if ok else None, now=at + timedelta(seconds=3))
        return job.id

    def deliver(self, job_id: int, *, sent: bool, at: datetime | None = None) -> None:
        at = at or utcnow()
        with self.sessions.begin() as session:
            (delivery_id,) = deliveries.create_deliveries(session, job_id, ["2.25.1"], ["pacs"], at)
            if sent:
                deliveries.mark_sent(session, delivery_id, at + timedelta(seconds=4))

    def finished(self, *, at: datetime, sent: bool = True, **study: int) -> str:
        uid = self.study(**study)
        self.deliver(self.run(uid, at=at), sent=sent, at=at)
        return uid

    def studies(self) -> set[str]:
        with self.sessions() as session:
            return set(session.scalars(select(Study.study_uid)))

    def files_of(self, study_uid: str) -> list[str]:
        return [f for f in self.archive.files() if f.startswith(study_uid + "/")]

    def close(self) -> None:
        self.runtime.close()


@pytest.fixture
def site(tmp_path: Path, any_db_url: str):
    """On the embedded SQLite and on PostgreSQL (the scale-out path)."""
    s = Site(tmp_path, database_url=any_db_url, keep_days=30.0)
    yield s
    s.close()


def test_only_finished_unpinned_studies_past_their_time_are_deleted(site: Site) -> None:
    old = utcnow() - timedelta(days=40)
    done = site.finished(at=old)
    failed = site.study()
    site.run(failed, ok=False, at=old)
    young = site.finished(at=utcnow() - timedelta(days=3))
    undelivered = site.finished(at=old, sent=False)  # its result still pending: never deleted
    pinned = site.finished(at=old)
    with site.sessions.begin() as session:
        assert pin(session, pinned, "admin", "teaching file")
    # pinned by a training cohort, its pathology recorded, the cohort's pin released after training:
    # the outcome keeps it
    confirmed = site.finished(at=old)
    with site.sessions.begin() as session:
        assert pin(session, confirmed, "train", "training cohort")
        record_outcome(session, confirmed, OutcomeValue("negative", "resection"), user="pathologist", via="api")
    with site.sessions.begin() as session:
        assert unpin(session, confirmed) and has_outcome(session, confirmed)
    running = site.study()  # claimed by a worker that is still at it
    with site.sessions.begin() as session:
        queue.scan_waiting_jobs(session, 0.0, utcnow() + timedelta(seconds=1))
        assert queue.claim_next(session, "w2", 600) is not None
    waiting = site.study()  # arriving: its job waits
    with site.sessions() as session:
        state_of = {s.study_uid: [j.state for j in s.jobs] for s in session.scalars(select(Study))}
    assert state_of[running] == [JobState.RUNNING] and state_of[waiting] == [JobState.WAITING]

    report = site.retention.sweep_once()

    # the failed study was never answered (issue 29): kept until a job succeeds or an admin releases it
    assert [d.study_uid for d in report.deleted] == [done]
    assert {d.reason for d in report.deleted} == {"age"}
    assert site.studies() == {young, undelivered, waiting, running, pinned, failed, confirmed}
    assert site.files_of(done) == []
    assert not (site.archive.root / done).exists(), "the empty study folder is removed"
    for kept in (young, undelivered, waiting, running, pinned, failed, confirmed):
        assert len(site.files_of(kept)) == 4
    with site.sessions() as session:
        assert kept_unanswered(session) == [(failed, f"job {_jobs_of(session, failed)[-1]} failed: no evidence of contrast")]
        assert study_counts(session).unanswered == 1
    with site.sessions.begin() as session:
        assert release(session, failed, "admin")
    report = site.retention.sweep_once()
    assert [d.study_uid for d in report.deleted] == [failed] and site.files_of(failed) == []
    check = check_node(site.archive, site.sessions, quarantine=site.tmp / "q")
    assert check.clean, check.lines()
    with site.sessions() as session:
        record = {d.study_uid: d for d in session.scalars(select(Deletion))}
    assert set(record) == {done, failed}
    assert all(d.state == "done" and d.instances == 4 and d.size_bytes > 0 and "keep_days" in d.detail
               for d in record.values())
    # counted in /metrics
    families = {f.name: f for f in live_collector(site.archive, site.sessions).collect()}
    studies = {s.labels["reason"]: s.value for s in families["egfr_node_retention_deleted_studies"].samples
               if s.name.endswith("_total")}
    assert studies == {"age": 2, "watermark": 0}
    # a second sweep has nothing to do
    assert site.retention.sweep_once().deleted == []


@pytest.fixture
def small_disk(tmpfs) -> Path:
    """A 12 MiB tmpfs for the archive: a real small disk (needs root, as CI has)."""
    return tmpfs("disk", "12m")


def test_the_watermarks_keep_a_small_disk_receiving_and_delete_the_longest_finished_first(tmp_path: Path,
                                                                                           small_disk: Path) -> None:
    """A bounded C-STORE loop sends 3.5 times the disk's size (60 studies of 4 images of 128
    KiB) to the SCP on a 12 MiB tmpfs; each study finishes (its job done, its result sent) an
    hour and a half after it arrived, and the worker's retention sweep runs between studies.
    Every instance is acknowledged with success; the disk never fills; the studies deleted
    are the longest finished; one finished too recently (min_age_hours) and a pinned one stay."""
    site = Site(tmp_path, data_dir=small_disk, database_url=f"sqlite:///{tmp_path / 'db.sqlite3'}", keep_days=0.0,
                high_watermark_percent=60.0, low_watermark_percent=40.0, min_age_hours=1.0)
    node = DicomNode(site.config, site.archive, site.sessions)
    node.start()
    try:
        statuses: list[int] = []
        finished: list[str] = []
        peak = 0.0
        start = utcnow() - timedelta(days=2)
        pinned = recent = ""
        for i in range(60):
            images = mr_series(4, rows=256, columns=256, seed=i)
            statuses += store(node.port, [*images, mask_for(images)])
            uid = str(images[0].StudyInstanceUID)
            if i == 0:
                pinned = uid
                with site.sessions.begin() as session:
                    pin(session, uid, "admin", "teaching file")
            at = start + timedelta(minutes=10 * i) if i < 59 else utcnow() - timedelta(minutes=5)
            site.deliver(site.run(uid, at=at), sent=True, at=at)
            recent = uid
            finished.append(uid)
            peak = max(peak, site.retention.disk_use().percent)
            site.retention.sweep_once()
        assert set(statuses) == {0}, sorted(set(statuses))
        assert peak < 90.0, f"the disk reached {peak:.0f} % used"
        kept = site.studies()
        assert pinned in kept and recent in kept
        with site.sessions() as session:
            deleted = list(session.scalars(select(Deletion.study_uid).order_by(Deletion.id)))
        assert len(deleted) >= 30 and set(deleted).isdisjoint(kept)
        order = [uid for uid in finished if uid in set(deleted)]
        assert deleted == order, "the longest finished go first"
        assert site.retention.disk_use().percent <= 60.0
        assert check_node(site.archive, site.sessions, quarantine=tmp_path / "q").clean
    finally:
        node.stop()
        site.close()


_KILLED_SWEEP = """
import os, signal, sys
from pathlib import Path
from dicom_node.store.archive import Archive
from dicom_node.config import RetentionSection
from dicom_node.retention import Retention
from db.engine import make_engine, make_sessionmaker

class DiesHalfWay(Archive):
    def remove(self, paths):
        super().remove(list(paths)[: len(paths) // 2])
        os.kill(os.getpid(), signal.SIGKILL)

sessions = make_sessionmaker(make_engine(sys.argv[2]))
Retention(RetentionSection(keep_days=1.0), sessions, DiesHalfWay(Path(sys.argv[1]) / "archive")).sweep_once()
"""


def test_a_deletion_killed_half_way_is_finished_by_the_next_sweep(tmp_path: Path) -> None:
    """SIGKILL a sweep in the middle of removing a big study's files; the restart completes
    the deletion, and nothing pinned or undelivered is touched."""
    site = Site(tmp_path, keep_days=1.0)
    old = utcnow() - timedelta(days=5)
    try:
        big = site.finished(at=old, images=300, rows=16)
        pinned = site.finished(at=old)
        undelivered = site.finished(at=old, sent=False)
        with site.sessions.begin() as session:
            pin(session, pinned, "admin", "kept")
        # the node's sweep in another process, SIGKILLed (by itself, at the exact spot) once
        # half of the big study's files are gone: the rows are all still there
        child = subprocess.run([sys.executable, "-c", _KILLED_SWEEP, site.config.storage.data_dir,
                                site.config.database_url], capture_output=True, text=True, timeout=120)
        assert 0 < len(site.files_of(big)) < 301, (len(site.files_of(big)), child.stderr[-2000:])
        assert child.returncode == -signal.SIGKILL
        with site.sessions() as session:
            assert session.scalar(select(Deletion.state).where(Deletion.study_uid == big)) == "marked"
        # in between, check names the deletion under way, not missing files
        between = check_node(site.archive, site.sessions, quarantine=tmp_path / "q")
        assert between.without_file == [] and between.deleting == 301
        # the restart (the worker's first sweep) finishes it
        report = site.retention.sweep_once()
        assert report.completed == 1
        assert big not in site.studies() and site.files_of(big) == []
        with site.sessions() as session:
            assert session.scalar(select(Deletion.state).where(Deletion.study_uid == big)) == "done"
            assert session.scalars(select(Instance.path).join(Series).join(Study).where(Study.study_uid == big)).all() == []
        assert {pinned, undelivered} <= site.studies()
        assert len(site.files_of(pinned)) == 4 and len(site.files_of(undelivered)) == 4
        after = check_node(site.archive, site.sessions, quarantine=tmp_path / "q")
        assert after.clean and after.deleting == 0, after.lines()
    finally:
        site.close()


def test_archive_pin_unpin_and_usage_from_the_command_line(tmp_path: Path, capsys) -> None:
    site = Site(tmp_path, keep_days=1.0)
    try:
        old = utcnow() - timedelta(days=5)
        a, b = site.finished(at=old), site.finished(at=old)
        config = tmp_path / "egfr-node.toml"
        config.write_text(f'[storage]\ndata_dir = "{site.config.storage.data_dir}"\nfree_space_reserve_mb = 0\n'
                          f'[retention]\nkeep_days = 1.0\n')
        cohort = tmp_path / "labels.csv"
        cohort.write_text(f"patient_id,study_uid,egfr_status\nP1,{a},positive\n")
        assert cli_main(["--config", str(config), "archive", "pin", "--cohort", str(cohort)]) == 0
        assert f"{a}: pinned (cohort labels.csv)" in capsys.readouterr().out
        assert cli_main(["--config", str(config), "archive", "pin", "1.2.3.999"]) == 0
        assert "1.2.3.999: not in the archive" in capsys.readouterr().out
        assert cli_main(["--config", str(config), "archive", "pin", "../etc"]) == 1
        assert "is not a valid UID" in capsys.readouterr().err
        assert cli_main(["--config", str(config), "archive", "prune", "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert f"would delete {b} (age)" in out and a not in out
        assert cli_main(["--config", str(config), "archive", "prune"]) == 0
        assert f"deleted {b} (age)" in capsys.readouterr().out
        assert site.studies() == {a}
        assert cli_main(["--config", str(config), "archive", "usage"]) == 0
        out = capsys.readouterr().out
        assert "1 pinned" in out and "deleted (age): 1 studies, 4 instances" in out and b in out
        assert cli_main(["--config", str(config), "archive", "unpin", a]) == 0
        with site.sessions() as session:
            assert [c.study_uid for c in eligible_studies(session, utcnow())] == [a]
    finally:
        site.close()


def _jobs_of(session, study_uid: str) -> list[int]:  # noqa: ANN001
    return [j.id for j in session.scalar(select(Study).where(Study.study_uid == study_uid)).jobs]


def test_a_study_whose_jobs_failed_or_that_came_in_part_is_never_deleted_unanswered(site: Site) -> None:
    """Issue 29, defect 1: with retention.min_age_hours 0 and a full disk, studies whose jobs
    failed three times (the disk held undeliverable results) were deleted seconds later, and a
    study of which only part arrived was failed and deleted. None of them was answered."""
    old = utcnow() - timedelta(days=40)
    failed_thrice = site.study()
    for attempt in range(3):  # each attempt fails; a rerun after each but the last (an admin asked again)
        site.run(failed_thrice, ok=False, at=old)
        if attempt < 2:
            with site.sessions.begin() as session:
                queue.replay(session, failed_thrice, old + timedelta(minutes=1), rerun=True)
    cancelled = site.study()
    with site.sessions.begin() as session:
        queue.cancel(session, _jobs_of(session, cancelled)[-1])
    answered_then_failed = site.finished(at=old)
    with site.sessions.begin() as session:
        queue.replay(session, answered_then_failed, old + timedelta(minutes=4), rerun=True)
    site.run(answered_then_failed, ok=False, at=old + timedelta(minutes=5))  # the rerun failed
    site.retention.settings = replace(site.retention.settings, min_age_hours=0.0, keep_days=0.001)
    assert site.retention.sweep_once().deleted == []
    assert {failed_thrice, cancelled, answered_then_failed} <= site.studies()
    with site.sessions() as session:
        kept = dict(kept_unanswered(session))
    assert "failed: no evidence of contrast" in kept[answered_then_failed] and "cancelled" in kept[cancelled]


def test_a_study_whose_results_never_reached_pacs_is_kept_after_a_failed_replay(site: Site) -> None:
    """Its done job's delivery failed (gave up); a rerun then failed: nothing was delivered."""
    old = utcnow() - timedelta(days=40)
    uid = site.study()
    job_id = site.run(uid, at=old)
    with site.sessions.begin() as session:
        (delivery_id,) = deliveries.create_deliveries(session, job_id, ["2.25.1"], ["pacs"], old)
        policy = deliveries.RetryPolicy(max_attempts=1, initial_backoff_seconds=1, max_backoff_seconds=1)
        deliveries.mark_failed_try(session, delivery_id, "association refused", policy, old)
    with site.sessions.begin() as session:
        queue.replay(session, uid, old + timedelta(minutes=5), rerun=True)
    with site.sessions.begin() as session:
        rerun = queue.claim_next(session, "w1", 600, old + timedelta(minutes=6))
        queue.finish_job(session, rerun.id, "w1", ok=False, reason="no evidence of contrast", now=old + timedelta(minutes=7))
    with site.sessions() as session:
        assert [j.state for j in session.scalar(select(Study).where(Study.study_uid == uid)).jobs] == [JobState.DONE,
                                                                                                        JobState.FAILED]
    assert site.retention.sweep_once().deleted == [] and uid in site.studies()


def test_during_a_deletion_a_copy_is_refused_and_a_new_instance_is_kept(tmp_path: Path) -> None:
    """Marked, files not yet removed: PACS re-sends one of its instances (0xA700, send later)
    and a new one (stored); the deletion then removes only what it marked."""
    from pynetdicom.sop_class import MRImageStorage

    from db.retention import finish_deletion, mark_deletion
    from dicom_node.receive.scp import Status

    site = Site(tmp_path, keep_days=1.0)
    node = DicomNode(site.config, site.archive, site.sessions)
    node.start()
    try:
        images = mr_series(3, rows=32, columns=32, seed=1)
        assert store(node.port, [*images, mask_for(images)]) == [0] * 4
        uid = str(images[0].StudyInstanceUID)
        site.deliver(site.run(uid, at=utcnow() - timedelta(days=5)), sent=True, at=utcnow() - timedelta(days=5))
        with site.sessions() as session:
            (candidate,) = eligible_studies(session, utcnow() - timedelta(days=1))
        with site.sessions.begin() as session:
            deletion = mark_deletion(session, candidate, "age", "test")
        assert deletion is not None
        assert store(node.port, images[0]) == [Status.OUT_OF_RESOURCES]  # a copy: refused, not acknowledged
        extra = mr_series(1, rows=32, columns=32, seed=2, study_uid=uid)[0]
        assert extra.SOPClassUID == MRImageStorage
        assert store(node.port, extra) == [0]  # new: stored
        site.archive.remove(deletion.paths)
        with site.sessions.begin() as session:
            assert finish_deletion(session, deletion.id)
        assert [Path(f).stem for f in site.files_of(uid)] == [str(extra.SOPInstanceUID)]
        with site.sessions() as session:
            kept = session.scalars(select(Instance.sop_instance_uid).join(Series).join(Study)
                                   .where(Study.study_uid == uid)).all()
            assert kept == [str(extra.SOPInstanceUID)]
            assert [j.state for j in session.scalar(select(Study).where(Study.study_uid == uid)).jobs] == [
                JobState.DONE, JobState.WAITING]  # the new image's study waits to be predicted again
        assert store(node.port, images[0]) == [0]  # once the deletion is done, the re-send is stored afresh
        assert check_node(site.archive, site.sessions, quarantine=tmp_path / "q").clean
    finally:
        node.stop()
        site.close()


def test_a_deletion_left_marked_is_cancelled_if_the_study_was_pinned_before_a_file_went(tmp_path: Path) -> None:
    from db.retention import mark_deletion

    site = Site(tmp_path, keep_days=1.0)
    try:
        uid = site.finished(at=utcnow() - timedelta(days=5))
        with site.sessions() as session:
            (candidate,) = eligible_studies(session, utcnow() - timedelta(days=1))
        with site.sessions.begin() as session:
            assert mark_deletion(session, candidate, "age", "test") is not None  # then the node died
        with site.sessions.begin() as session:
            assert pin(session, uid, "admin", "keep it")
        report = site.retention.sweep_once()
        assert report.completed == 0 and report.deleted == [] and len(site.files_of(uid)) == 4
        with site.sessions() as session:
            (record,) = session.scalars(select(Deletion)).all()
            assert record.state == "cancelled" and "cancelled" in record.detail
        assert check_node(site.archive, site.sessions, quarantine=tmp_path / "q").clean
    finally:
        site.close()
