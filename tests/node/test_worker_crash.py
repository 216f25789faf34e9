"""SIGKILL a worker in the middle of a job: the job completes on another worker after the lease
expires, and PACS gets exactly one SR."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.models import Delivery, Job
from dicom_node.config import load_config
from tests.node.bundles import write_random_bundle
from tests.node.peers import PynetdicomPacs
from tests.node.process import cli, free_port, start, wait_until_listening
from tests.waiting import wait_for


def _job_states(sessions) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return [(j.state.value, j.attempts) for j in s.scalars(select(Job).order_by(Job.id))]


def _wait(sessions, predicate, timeout: float, what: str) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    def matched() -> list[tuple[str, int]] | None:
        states = _job_states(sessions)
        return states if predicate(states) else None

    return wait_for(matched, timeout, what)


def test_sigkill_worker_mid_job_completes_after_lease_with_one_sr(tmp_path: Path, phantom_study) -> None:
    pacs = PynetdicomPacs(tmp_path / "pacs")
    port = free_port()
    config_path = tmp_path / "egfr-node.toml"
    config_path.write_text(
        f'[node]\nae_title = "EGFR_NODE"\nhost = "127.0.0.1"\nport = {port}\nreceive_processes = 1\n'
        f'[storage]\ndata_dir = "{tmp_path / "data"}"\nfree_space_reserve_mb = 0\n'
        '[worker]\nstudy_stable_seconds = 1.0\nscan_interval_seconds = 0.3\nclaim_interval_seconds = 0.3\n'
        'lease_seconds = 3.0\nmax_attempts = 3\n'
        '[delivery]\ninitial_backoff_seconds = 0.5\nscan_interval_seconds = 0.5\n'
        f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nhost = "127.0.0.1"\nport = {pacs.port}\n'
    )
    assert cli(config_path, "db", "upgrade").returncode == 0
    bundle = write_random_bundle(tmp_path / "bundle")
    activated = cli(config_path, "models", "activate", str(bundle), "--force")  # random weights: forced
    assert activated.returncode == 0, activated.stderr
    scp = start(config_path, "scp")
    workers = []
    engine = make_engine(load_config(config_path).database_url)
    sessions = make_sessionmaker(engine)
    try:
        wait_until_listening(port, scp)
        from tests.node.scu import store

        assert set(store(port, sorted(str(p) for p in phantom_study("axial2d", "seg").folder.rglob("*.dcm")))) == {0}
        first = start(config_path, "worker")
        workers.append(first)
        _wait(sessions, lambda s: s and s[0][0] == "running", 60, "the first worker to claim the job")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
        assert first.returncode == -signal.SIGKILL
        assert _job_states(sessions)[0][0] == "running"  # killed mid-job: nothing finished it
        second = start(config_path, "worker")
        workers.append(second)
        states = _wait(sessions, lambda s: s and s[0][0] in ("done", "failed"), 120, "the job to finish on the second worker")
        assert states == [("done", 2)]
        # every delivery settled (sent), one per result object: nothing more will be sent
        def settled_deliveries() -> bool:
            with sessions() as s:
                states = [d.state.value for d in s.scalars(select(Delivery))]
            return bool(states) and set(states) == {"sent"}

        wait_for(settled_deliveries, 30, "every delivery sent")
        with sessions() as s:
            job = s.scalars(select(Job)).one()
            sent = [(d.sop_instance_uid, d.state.value) for d in s.scalars(select(Delivery).where(Delivery.job_id == job.id))]
        assert sorted(uid for uid, _ in sent) == sorted({uid for uid, _ in sent}) and {st for _, st in sent} == {"sent"}, sent
        srs = pacs.of_class(Comprehensive3DSRStorage)
        assert [str(sr.SOPInstanceUID) for sr in srs] == [job.result["instances"]["sr"]]
    finally:
        for process in (*workers, scp):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
        engine.dispose()
        pacs.stop()
