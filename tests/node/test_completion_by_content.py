"""Issue 30: a study whose mask arrives before its images starts when the last image the mask
names is in, not when a timer runs out, and the worker's scan wakes the job runner at once; the
worker loads the active bundle while idle (and the next one when it is activated), so the first
study after a start or an activation does not wait for its folds.

The worker runs as in production (its scheduler and job runner threads), with the quiet timer
and the claim interval both set to 5 minutes: only completion by content and the scan's wake
can start the job within the test's time.
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import numpy as np
from pydicom import dcmread

from db.models import utcnow
from db.queue import JobView, get_job
from dicom_node.commands.demo import SR_CLASSES
from dicom_node.worker import Worker
from pipeline.load.study import load_study
from pipeline.model.infer import FoldEnsemble
from pipeline.prep.preprocess import preprocess
from tests.node.bundles import write_random_bundle
from tests.node.peers import PynetdicomPacs
from tests.node.test_results import Node
from tests.waiting import wait_for

def test_a_mask_sent_before_its_images_starts_the_job_when_the_last_image_is_in(tmp_path, phantom_study) -> None:
    study = phantom_study("axial2d", "seg")
    files = sorted(study.folder.rglob("*.dcm"))
    mask = [f for f in files if dcmread(f, stop_before_pixels=True).SOPInstanceUID == study.mask_sop_uid]
    images = [f for f in files if f not in mask]
    assert len(mask) == 1 and len(images) > 10
    pacs = PynetdicomPacs(tmp_path / "pacs")
    node = Node(tmp_path, pacs.port)
    bundle = write_random_bundle(tmp_path / "bundle")
    node.activate(bundle)
    worker = _worker(node, "content", study_stable_seconds=300.0,
                     content_settle_seconds=0.5, scan_interval_seconds=0.2, claim_interval_seconds=300.0)
    try:
        worker.start()
        node.send(_folder_of(tmp_path / "first", mask))
        node.send(_folder_of(tmp_path / "half", images[: len(images) // 2]))
        time.sleep(1.5)  # three settles: the mask's images are not all in, so nothing starts
        with node.runtime.sessions() as session:
            waiting = get_job(session, 1)
        assert waiting.state == "waiting", (waiting.state, waiting.reason)
        missing = len(images) - len(images) // 2
        assert waiting.reason.startswith(f"incomplete: {missing} of the {len(images)} images the mask references are not "
                                         "in the archive"), waiting.reason

        job, answered_in = _send_last_and_wait_for_the_sr(node, pacs, _folder_of(tmp_path / "rest", images[len(images) // 2:]))
        # neither the 300 s timer nor the 300 s claim interval: the content rule and the scan's wake
        assert answered_in < 60, answered_in
        assert job.queued_because.startswith(f"complete by content: the mask and the {len(images)} images"), job.queued_because
        assert (job.started_at - job.queued_at).total_seconds() < 5, (job.queued_at, job.started_at)
    finally:
        worker.stop()
        node.close()
        pacs.stop()

    # the SR is the answer for the whole study: the same probability as the study read at once
    [sr] = [ds for ds in pacs.received if str(ds.SOPClassUID) in SR_CLASSES]
    assert sr.StudyInstanceUID == study.study_uid
    _assert_the_answer_of_the_study_read_at_once(job, bundle, study.folder)
    assert job.result["selection"]["series_uid"] == study.image_series_uid


def _assert_the_answer_of_the_study_read_at_once(job: JobView, bundle: Path, study: Path) -> None:
    """The job's probability is the one the bundle gives the whole study read from its folder."""
    expected = FoldEnsemble.load(bundle, device="cpu")
    model_input = preprocess(load_study(study), expected.manifest.preprocessing)
    assert np.isclose(job.result["probability"], expected.predict(model_input.array).probability, atol=2e-6)


def _send_last_and_wait_for_the_sr(node: Node, pacs: PynetdicomPacs, folder: Path) -> tuple[JobView, float]:
    """Send the study's last part; (its job, done; seconds from the part acknowledged to the SR at the PACS)."""
    node.send(folder)
    acknowledged = time.monotonic()
    wait_for(lambda: any(str(ds.SOPClassUID) in SR_CLASSES for ds in pacs.received), 120, "the SR at the PACS", every=0.05)
    answered_in = time.monotonic() - acknowledged

    def finished() -> JobView | None:  # the SR leaves as soon as it is archived, before its job is marked done
        with node.runtime.sessions() as session:
            job = get_job(session, 1)
        return job if job.state in ("done", "failed") else None

    job = wait_for(finished, 30, "the job marked done after its SR was sent")
    assert job.state == "done", (job.state, job.reason)
    return job, answered_in


def _worker(node: Node, worker_id: str, **settings: float) -> Worker:
    """A worker of the test's node with these ``[worker]`` settings (timers the test sets apart)."""
    config = replace(node.config, worker=replace(node.config.worker, **settings))
    return Worker(config, node.runtime.sessions, node.runtime.archive, worker_id=worker_id)


def _folder_of(folder: Path, files: list[Path]) -> Path:
    """Links to ``files`` in a folder of their own (what one routing rule sends at a time)."""
    folder.mkdir()
    for number, f in enumerate(files):
        (folder / f"{number:04d}-{f.name}").symlink_to(f)
    return folder


def test_the_worker_loads_the_active_bundle_while_idle_and_again_when_another_is_activated(tmp_path, caplog) -> None:
    pacs = PynetdicomPacs(tmp_path / "pacs")
    node = Node(tmp_path, pacs.port)
    worker = _worker(node, "warm", claim_interval_seconds=0.1)
    caplog.set_level("INFO", logger="dicom_node.worker")

    def loaded() -> list[str]:
        return [r.getMessage() for r in caplog.records if "loaded on cpu" in r.getMessage()]

    try:
        worker.start()
        time.sleep(0.5)
        assert loaded() == []  # no active bundle, nothing to load
        first = node.activate(write_random_bundle(tmp_path / "a", name="bundle-a"))
        wait_for(lambda: len(loaded()) == 1, 60, "the active bundle loaded before any study")
        assert loaded()[0].startswith(f"model bundle {first} (bundle-a")
        time.sleep(0.5)
        assert len(loaded()) == 1  # kept, not reloaded at each idle pass
        second = node.activate(write_random_bundle(tmp_path / "b", name="bundle-b", seed=2))
        wait_for(lambda: len(loaded()) == 2, 60, "the newly activated bundle loaded")
        assert loaded()[1].startswith(f"model bundle {second} (bundle-b")
    finally:
        worker.stop()
        node.close()
        pacs.stop()


def test_images_first_then_the_mask_takes_the_bias_field_fitted_while_it_waited(tmp_path, phantom_study) -> None:
    """The usual order in a department: the scanner's images, minutes later the radiologist's
    SEG. While the study waits for its mask an idle worker fits the N4 field of its
    post-contrast series; the job takes it (no brain mask or N4 in the job) and the answer is
    the one the study read at once gives. The job is queued by the images' series being quiet,
    not held for a settle after the mask."""
    study = phantom_study("axial3d", "seg")
    files = sorted(study.folder.rglob("*.dcm"))
    mask = [f for f in files if dcmread(f, stop_before_pixels=True).SOPInstanceUID == study.mask_sop_uid]
    images = [f for f in files if f not in mask]
    pacs = PynetdicomPacs(tmp_path / "pacs")
    node = Node(tmp_path, pacs.port)
    bundle = write_random_bundle(tmp_path / "bundle")
    node.activate(bundle)
    assert node.config.worker.prefit_after_seconds > 0  # on by default
    worker = _worker(node, "prefit", study_stable_seconds=300.0,
                     content_settle_seconds=5.0, prefit_after_seconds=0.5, scan_interval_seconds=0.2,
                     claim_interval_seconds=0.2)
    try:
        worker.start()
        node.send(_folder_of(tmp_path / "images", images))
        wait_for(lambda: len(worker.bias_fits) == 1, 120, "the bias field fitted while the study waits for its mask")
        with node.runtime.sessions() as session:
            waiting = get_job(session, 1)
        assert waiting.state == "waiting" and waiting.reason.startswith("no lesion mask"), (waiting.state, waiting.reason)
        time.sleep(5.5)  # the images' series is quiet longer than the settle

        job, answered_in = _send_last_and_wait_for_the_sr(node, pacs, _folder_of(tmp_path / "mask", mask))
        assert job.queued_because.startswith(f"complete by content: the mask and the {len(images)} images it names are "
                                             "in, their series quiet 5 s"), job.queued_because
        assert answered_in < 5.0, answered_in  # not held for the 5 s settle after the mask
        timings = job.result["timings_s"]
        assert timings["preprocess.brain_mask"] == 0.0, timings  # the kept fit, not fitted in the job
        assert len(worker.bias_fits) == 1  # the job's key was the pre-fit's
    finally:
        worker.stop()
        node.close()
        pacs.stop()

    _assert_the_answer_of_the_study_read_at_once(job, bundle, study.folder)


def test_a_study_that_cannot_be_fitted_ahead_is_said_once_and_left_to_its_job(tmp_path, phantom_study, caplog) -> None:
    """The fit ahead is only a head start: an image file gone from the archive (or a series
    the loader refuses) is one line naming the study by UID, tried once per arrival, nothing kept."""
    study = phantom_study("axial2d", "seg")
    images = [f for f in sorted(study.folder.rglob("*.dcm")) if f.parent.name.startswith("MR")]
    node = Node(tmp_path, None)
    node.activate(write_random_bundle(tmp_path / "bundle"))
    caplog.set_level("INFO", logger="dicom_node.worker")
    try:
        node.send(_folder_of(tmp_path / "images", images))
        later = utcnow() + timedelta(seconds=10)
        next(node.runtime.archive.root.rglob("*.dcm")).unlink()  # the disk lost a file
        assert node.worker.prefit_once(now=later) == []
        assert node.worker.prefit_once(now=later) == []  # not tried again until something arrives
        said = [r.getMessage() for r in caplog.records if "no bias field fitted ahead" in r.getMessage()]
        assert len(said) == 1 and said[0].startswith(f"study {study.study_uid}: no bias field fitted ahead of the mask")
        assert study.patient_id not in said[0]
        assert len(node.worker.bias_fits) == 0
    finally:
        node.close()


def test_a_mask_arriving_at_any_receive_process_scans_at_once_not_at_the_interval(tmp_path, phantom_study) -> None:
    """The scan runs every 5 minutes here: only the arrival of the mask can start the jobs in
    the test's time. Two receive processes share the port, so the mask may land in either;
    both wake the worker of the node. A study whose images came long before its mask is queued
    at once; one sent whole (images and mask in one association) when its series' settle ends."""
    mask_after = phantom_study("axial2d", "seg")
    files = sorted(mask_after.folder.rglob("*.dcm"))
    mask = [f for f in files if dcmread(f, stop_before_pixels=True).SOPInstanceUID == mask_after.mask_sop_uid]
    images = [f for f in files if f not in mask]
    whole = phantom_study("axial2d", "rtstruct")
    pacs = PynetdicomPacs(tmp_path / "pacs")
    node = Node(tmp_path, pacs.port, receive_processes=2)
    assert len(node.scp.receivers) == 1
    node.activate(write_random_bundle(tmp_path / "bundle"))
    worker = _worker(node, "woken", study_stable_seconds=300.0,
                     content_settle_seconds=1.0, scan_interval_seconds=300.0, claim_interval_seconds=300.0,
                     prefit_after_seconds=0.0)
    worker.wake_on_masks(node.scp.mask_arrivals)
    try:
        worker.start()
        node.send(_folder_of(tmp_path / "images", images))
        time.sleep(2.0)  # the images' series quiet longer than the settle; no scan since the start
        with node.runtime.sessions() as session:
            assert get_job(session, 1).state == "waiting"
        job, answered_in = _send_last_and_wait_for_the_sr(node, pacs, _folder_of(tmp_path / "mask", mask))
        assert job.queued_because.startswith("complete by content"), job.queued_because
        assert answered_in < 60, answered_in

        node.send(whole.folder)
        wait_for(lambda: len([ds for ds in pacs.received if str(ds.SOPClassUID) in SR_CLASSES]) == 2, 120,
                 "the SR of the study sent whole")
        with node.runtime.sessions() as session:
            second = get_job(session, 2)
        assert second.study_uid == whole.study_uid and second.queued_because.startswith("complete by content")
        assert (second.queued_at - second.created_at).total_seconds() < 10, (second.created_at, second.queued_at)
    finally:
        worker.stop()
        node.close()
        pacs.stop()


def test_a_study_sent_whole_has_its_bias_field_fitted_from_the_masks_arrival_during_the_settle(
        tmp_path, phantom_study, caplog) -> None:
    """Images and mask in one association: the study is complete by content when the mask
    arrives but queued only when its series' settle has passed (3 s here). The N4 field of the
    series the mask names is fitted from the mask's arrival, so the job takes that fit (no brain
    mask or N4 of its own) and the answer is the one the study read at once gives."""
    study = phantom_study("axial2d", "seg")
    pacs = PynetdicomPacs(tmp_path / "pacs")
    node = Node(tmp_path, pacs.port)
    bundle = write_random_bundle(tmp_path / "bundle")
    node.activate(bundle)
    worker = _worker(node, "settling", study_stable_seconds=300.0, content_settle_seconds=3.0,
                     scan_interval_seconds=300.0, claim_interval_seconds=300.0)
    worker.wake_on_masks(node.scp.mask_arrivals)
    caplog.set_level("INFO", logger="pipeline.prefit")
    try:
        worker.start()
        time.sleep(0.5)  # the scan at the start has run
        job, _ = _send_last_and_wait_for_the_sr(node, pacs, study.folder)
        assert job.queued_because.startswith("complete by content"), job.queued_because
        assert job.result["timings_s"]["preprocess.brain_mask"] == 0.0, job.result["timings_s"]  # the fit begun at arrival
        assert len(worker.bias_fits) == 1
        said = [r.getMessage() for r in caplog.records if "fitted ahead of the job" in r.getMessage()]
        assert said == [f"study {study.study_uid}: bias field of series {study.image_series_uid} fitted ahead of the job "
                        f"in {said[0].rsplit(' in ', 1)[1]}"], said
    finally:
        worker.stop()
        node.close()
        pacs.stop()

    _assert_the_answer_of_the_study_read_at_once(job, bundle, study.folder)


def test_without_a_mask_arrival_the_interval_alone_scans(tmp_path, phantom_study) -> None:
    """The wake is the only change: a worker not told of the SCP's arrivals (``egfr-node
    worker`` apart) does not scan before its interval."""
    study = phantom_study("axial2d", "seg")
    node = Node(tmp_path, None)
    worker = _worker(node, "deaf", study_stable_seconds=300.0,
                     content_settle_seconds=0.5, scan_interval_seconds=300.0, claim_interval_seconds=300.0,
                     prefit_after_seconds=0.0)
    try:
        worker.start()
        time.sleep(0.5)  # the scan at the start has run
        node.send(study.folder)
        assert node.scp.mask_arrivals.is_set()  # the SCP said it
        time.sleep(2.0)
        with node.runtime.sessions() as session:
            assert get_job(session, 1).state == "waiting"  # nobody listened: the 5-minute interval
    finally:
        worker.stop()
        node.close()
