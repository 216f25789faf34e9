"""Issue 18, defect 10: stopping a worker does not wait for its running job (minutes with N4 on
a real study). After ``worker.stop_grace_seconds`` the job goes back to the queue, its lease
released and the attempt not counted, and the next worker runs it to the end."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta

from db.models import utcnow
from db.queue import get_job
from dicom_node.worker import Worker
from tests.node.bundles import write_random_bundle
from tests.node.peers import PynetdicomPacs
from tests.node.test_results import Node
from tests.waiting import wait_for


def test_a_stop_hands_the_running_job_back_and_the_next_worker_finishes_it(tmp_path, phantom_study) -> None:
    pacs = PynetdicomPacs(tmp_path / "pacs")
    node = Node(tmp_path, pacs.port)
    try:
        node.activate(write_random_bundle(tmp_path / "bundle"))
        node.arrive(phantom_study("axial2d", "seg").folder)
        config = replace(node.config, worker=replace(node.config.worker, stop_grace_seconds=0.5,
                                                     claim_interval_seconds=0.1, scan_interval_seconds=60))
        worker = Worker(config, node.runtime.sessions, node.runtime.archive, worker_id="stopping")
        worker.start()
        def running() -> bool:
            with node.runtime.sessions() as session:
                job = get_job(session, 1)
            assert job.state in ("queued", "running"), job
            return job.state == "running"

        wait_for(running, 60, "job 1 running", every=0.05)
        began = time.monotonic()
        worker.stop()
        stopped_in = time.monotonic() - began
        with node.runtime.sessions() as session:
            handed = get_job(session, 1)
        # the job (N4 alone takes seconds here) was not waited for
        assert handed.state == "queued", (handed.state, handed.reason, stopped_in)
        assert handed.lease_owner is None and handed.attempts == 0
        assert handed.reason == "handed back: worker stopping stopped during the job"
        assert stopped_in < 0.5 + 3.0, stopped_in
        # the next worker runs it to the end, once; the stopped worker's late result changes nothing
        job = node.worker.claim_once()
        assert job.id == 1 and job.state == "done" and job.attempts == 1, (job.state, job.reason)
        assert worker.join_outlived(120), "the stopped worker's runner did not end"
        with node.runtime.sessions() as session:
            done = get_job(session, 1)
        assert done.state == "done" and done.attempts == 1 and done.result == job.result
        assert node.worker.claim_once() is None
        assert node.worker.scan_once(now=utcnow() + timedelta(seconds=60)) == []
    finally:
        node.close()
        pacs.stop()
