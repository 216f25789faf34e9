"""Issue 18, items 2 and 3: ``egfr-node check`` finds what a crash, a restore or an admin's
hands leave behind, ``--repair`` leaves it clean; ``backup`` of a node under C-STORE load and
``restore`` into an empty data folder lose nothing that was acknowledged before the backup."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import socket
import threading
import time
from pathlib import Path

from db.migrate import upgrade
from db.queue import claim_next, replay
from dicom_node.cli import main as cli
from dicom_node.commands.backup import backup_node, restore_node
from dicom_node.check import check_node
from dicom_node.store.import_files import import_folder
from dicom_node.store.open import open_runtime
from dicom_node.receive.server import DicomNode
from tests.conftest import make_config
from tests.dicom_factory import mr_series
from tests.node.scu import store
from tests.waiting import wait_for


def test_check_finds_each_planted_inconsistency_and_repair_leaves_it_clean(tmp_path, phantom_study, caplog) -> None:
    config = make_config(tmp_path / "data")
    upgrade(config.database_url)
    runtime = open_runtime(config)
    quarantine = config.storage.data_path / "quarantine"
    try:
        study = phantom_study("axial2d", "seg")
        import_folder(study.folder, runtime.archive, runtime.sessions, progress=False)
        clean = check_node(runtime.archive, runtime.sessions, quarantine=quarantine)
        assert clean.clean and clean.files == clean.rows > 10, clean.lines()

        files = sorted(p for p in (runtime.archive.root / study.study_uid).rglob("*.dcm"))
        deleted, changed = files[0], files[1]
        deleted.unlink()  # an admin's rm
        data = bytearray(changed.read_bytes())
        data[-10] ^= 0xFF  # one changed byte in the pixels
        changed.write_bytes(bytes(data))
        extra = mr_series(1, study_uid=study.study_uid, seed=5)[0]  # a whole file copied in by hand, no row
        relative = runtime.archive.relative_path(study.study_uid, str(extra.SeriesInstanceUID), str(extra.SOPInstanceUID))
        runtime.archive.path(relative).parent.mkdir(parents=True, exist_ok=True)
        extra.save_as(runtime.archive.path(relative), enforce_file_format=True)
        junk = runtime.archive.root / study.study_uid / "notes.txt"  # not DICOM at all
        junk.write_text("reading notes")
        stale = runtime.archive.incoming / f"{socket.gethostname()}-999999-deadbeef.tmp"  # a dead writer's
        stale.write_bytes(b"half a file")
        with runtime.sessions.begin() as session:  # a job whose worker died mid-run (its lease ran out)
            job, created = replay(session, study.study_uid, rerun=True)
        assert created
        with runtime.sessions.begin() as session:
            assert claim_next(session, "dead-worker", -5.0, any_job=True).id == job.id

        found = check_node(runtime.archive, runtime.sessions, quarantine=quarantine)
        assert not found.clean
        assert found.without_file == [deleted.stem]  # the file is named by its SOP Instance UID
        assert sorted(found.without_row) == sorted([relative, f"{study.study_uid}/notes.txt"])
        assert found.changed == [changed.stem] and found.temporary == [stale.name] and found.stuck == [f"job {job.id} (dead-worker)"]

        # the SCP runs the quick part (no hashing) when it starts, and says what to run
        node = DicomNode(config, runtime.archive, runtime.sessions)
        with caplog.at_level(logging.INFO, logger="dicom_node.receive.server"):
            node.start()
            try:
                (started,) = wait_for(lambda: [r for r in caplog.records if "archive check at start" in r.message], 30,
                                      "the SCP's check at start")
            finally:
                node.stop()
        assert started.levelno == logging.WARNING and "egfr-node check --repair" in started.message
        assert f"1 rows whose file is missing: {deleted.stem}" in started.message
        assert "2 files without a row" in started.message and f"job {job.id} (dead-worker)" in started.message
        assert "sha256" not in started.message  # the changed byte needs the full check

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli(["--config", str(_config_file(tmp_path, config)), "check", "--repair"])
        assert code == 1 and "left:" in out.getvalue(), out.getvalue()  # two instances only a backup can bring back
        after = check_node(runtime.archive, runtime.sessions, quarantine=quarantine)
        assert after.clean, after.lines()
        assert (quarantine / changed.relative_to(runtime.archive.root)).is_file()  # the changed file kept aside
        assert (quarantine / f"{study.study_uid}/notes.txt").is_file()
        assert runtime.archive.path(relative).is_file() and after.rows == after.files  # the whole file recorded
        assert "restore it from a backup" in out.getvalue()
    finally:
        runtime.close()


def _config_file(tmp: Path, config) -> Path:  # noqa: ANN001
    path = tmp / "egfr-node.toml"
    path.write_text(f'[storage]\ndata_dir = "{config.storage.data_dir}"\nfree_space_reserve_mb = 0\n')
    return path


def test_backup_under_load_and_restore_lose_nothing_acknowledged(tmp_path) -> None:
    config = make_config(tmp_path / "node")
    upgrade(config.database_url)
    runtime = open_runtime(config)
    node = DicomNode(config, runtime.archive, runtime.sessions)
    node.start()
    acknowledged: list[tuple[float, str]] = []
    stop = threading.Event()

    def load() -> None:
        seed = 0
        while not stop.is_set():
            batch = mr_series(10, seed=seed)
            seed += 1
            for ds, status in zip(batch, store(node.port, batch)):
                if status == 0:
                    acknowledged.append((time.monotonic(), str(ds.SOPInstanceUID)))

    sender = threading.Thread(target=load, daemon=True)
    sender.start()
    try:
        while len(acknowledged) < 60:
            time.sleep(0.05)
        began = time.monotonic()
        summary = backup_node(config, tmp_path / "backup")
        while len(acknowledged) < len([a for a in acknowledged if a[0] < began]) + 30:
            time.sleep(0.05)  # the load went on during and after the backup
    finally:
        stop.set()
        sender.join(60)
        node.stop()
        runtime.close()
    before = {uid for at, uid in acknowledged if at < began}
    assert summary.problems == () and summary.files >= len(before)

    restored = make_config(tmp_path / "restored")
    lines = restore_node(restored, tmp_path / "backup")
    assert "archive and database agree" in lines, lines
    runtime = open_runtime(restored)
    try:
        with runtime.sessions() as session:
            from db.reconcile import recorded_files

            rows = {r.sop_instance_uid: r for r in recorded_files(session)}
        missing = before - set(rows)
        assert not missing, f"{len(missing)} acknowledged instances not restored"
        for uid in before:
            assert runtime.archive.path(rows[uid].path).is_file()
        report = check_node(runtime.archive, runtime.sessions, quarantine=tmp_path / "q")
        assert report.clean, report.lines()
    finally:
        runtime.close()
    assert os.listdir(tmp_path / "restored" / "archive")
    shutil.rmtree(tmp_path / "backup")
