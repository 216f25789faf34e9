"""Issue 30 item 3: when studies queue, one worker runs several at once (``worker.parallel_jobs``,
one per core by default), so a backlog drains faster than one study at a time; the results are
those of the studies run alone. ``tests/bench_infer.py --throughput`` measures the gain."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from pynetdicom.sop_class import Comprehensive3DSRStorage
from sqlalchemy import select

from db.models import Job, JobState, utcnow
from dicom_node.worker import Worker
from tests.node.test_results import Node, bundle_a, pacs  # noqa: F401 (fixtures)
from tests.waiting import wait_for


def test_two_queued_studies_run_at_once_and_each_gets_its_own_answer(tmp_path, pacs, bundle_a, phantom_study) -> None:  # noqa: F811
    studies = [phantom_study("axial2d", "seg"), phantom_study("axial2d", "rtstruct", patient_index=7)]
    node = Node(tmp_path, pacs.port)
    config = replace(node.config, worker=replace(node.config.worker, parallel_jobs=2, claim_interval_seconds=300.0,
                                                 scan_interval_seconds=300.0))
    worker = Worker(config, node.runtime.sessions, node.runtime.archive, worker_id="two-at-once")
    try:
        node.activate(bundle_a)
        for study in studies:
            node.send(study.folder)
        assert len(worker.scan_once(now=utcnow() + timedelta(seconds=60))) == 2
        worker.start()  # both runners claim at once: neither interval (300 s) is waited for
        wait_for(lambda: len(pacs.of_class(Comprehensive3DSRStorage)) == 2, 120, "both SRs at the PACS")

        def finished() -> bool:  # an SR leaves as soon as it is archived, before its job is marked done
            with node.runtime.sessions() as session:
                return set(session.scalars(select(Job.state))) <= {JobState.DONE, JobState.FAILED}

        wait_for(finished, 30, "both jobs marked done")
        with node.runtime.sessions() as session:
            jobs = session.scalars(select(Job).order_by(Job.started_at)).all()
            assert [j.state.value for j in jobs] == ["done", "done"], [(j.id, j.reason) for j in jobs]
            first, second = jobs
            assert second.started_at < first.finished_at, "the second study waited for the first"
            answers = {j.study.study_uid: j.result["selection"]["mask_kind"] for j in jobs}
        assert answers == {studies[0].study_uid: "SEG", studies[1].study_uid: "RTSTRUCT"}
        assert {str(ds.StudyInstanceUID) for ds in pacs.of_class(Comprehensive3DSRStorage)} == set(answers)
    finally:
        worker.stop()
        node.close()
