"""SIGKILL in the middle of an association: what got a success status is on disk and in the
database, and no half-written file is registered."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
from pathlib import Path

from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.models import Instance
from dicom_node.config import load_config
from tests.dicom_factory import mr_series
from tests.node.process import cli, free_port, start, wait_until_listening, write_config


def test_sigkill_mid_association_loses_nothing_acknowledged(tmp_path: Path) -> None:
    port = free_port()
    config_path = write_config(tmp_path, port)
    assert cli(config_path, "db", "upgrade").returncode == 0
    node = start(config_path, "scp")
    wait_until_listening(port, node)

    images = mr_series(400, rows=256, columns=256)
    acknowledged: list[str] = []
    killed = threading.Event()
    ae = AE(ae_title="PACS")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ["1.2.840.10008.1.2.1"])
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="EGFR_NODE")
    assert assoc.is_established
    for ds in images:
        if len(acknowledged) == 60 and not killed.is_set():
            # kill while the next C-STOREs are in flight
            threading.Timer(0.05, lambda: (os.kill(node.pid, signal.SIGKILL), killed.set())).start()
        if not assoc.is_established:
            break
        status = assoc.send_c_store(ds)
        if status and status.Status == 0:
            acknowledged.append(ds.SOPInstanceUID)
        elif killed.is_set():
            break
    node.wait(10)
    assert killed.is_set() and node.returncode == -signal.SIGKILL
    assert 60 <= len(acknowledged) < len(images)

    config = load_config(config_path)
    engine = make_engine(config.database_url)
    try:
        with make_sessionmaker(engine).begin() as s:
            rows = {r.sop_instance_uid: r for r in s.scalars(select(Instance))}
    finally:
        engine.dispose()
    archive = config.storage.archive_path
    # everything acknowledged is recorded and on disk, whole
    assert set(acknowledged) <= set(rows)
    # every recorded file is complete: its bytes hash to what was recorded
    for row in rows.values():
        data = (archive / row.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row.sha256
        assert dcmread(archive / row.path).SOPInstanceUID == row.sop_instance_uid
    # only whole, linked files are registered: every row names a .dcm in the study folders,
    # never the temporary folder; a file on disk without a row was never acknowledged
    assert all(r.path.endswith(".dcm") and not r.path.startswith(".") for r in rows.values())
    on_disk = {p.stem for p in archive.glob("*/*/*.dcm")}
    assert set(rows) <= on_disk
    assert not (on_disk - set(rows)) & set(acknowledged)

    # restart: temporary files are cleared, the rest of the study is accepted, nothing twice
    node = start(config_path, "scp")
    try:
        wait_until_listening(port, node)
        assert list((archive / ".incoming").iterdir()) == []  # the dead process's leftovers
        assoc = ae.associate("127.0.0.1", port, ae_title="EGFR_NODE")
        assert all(assoc.send_c_store(ds).Status == 0 for ds in images)
        assoc.release()
    finally:
        node.send_signal(signal.SIGINT)
        node.wait(20)
    assert node.returncode == 0
    engine = make_engine(config.database_url)
    try:
        with make_sessionmaker(engine).begin() as s:
            assert len(s.scalars(select(Instance)).all()) == len(images)
    finally:
        engine.dispose()
    assert len(list(archive.rglob("*.dcm"))) == len(images)
