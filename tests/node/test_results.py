"""The node's main job on loopback: a study and its mask in, exactly one SR (plus the result
card, and the SEG derived from an RTSTRUCT) out to PACS; nothing loops when PACS sends them
back; deliveries retried with growing intervals; bundles swapped while a job runs."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import highdicom as hd
import pytest
from pydicom import dcmread
from pynetdicom.sop_class import Comprehensive3DSRStorage, SecondaryCaptureImageStorage, SegmentationStorage
from sqlalchemy import select

from db import bundles
from db.models import Job, JobState, utcnow
from db.queue import get_job, replay
from dicom_node import bundles as models
from dicom_node.config import Config, DeliverySection, Destination
from dicom_node.report.sr import read_sr_result
from dicom_node.store.open import open_runtime
from dicom_node.receive.server import DicomNode
from dicom_node.worker import Worker
from pipeline.model.bundle import BundleError
from tests.conftest import make_config, require_tool
from tests.node.bundles import write_random_bundle
from tests.node.peers import PynetdicomPacs, StorescpPacs
from tests.node.process import free_port
from tests.node.scu import store
from tests.waiting import wait_for
from db.migrate import upgrade


class Node:
    """SCP + worker of one test, talking to one PACS destination."""

    def __init__(self, tmp: Path, pacs_port: int | None, *, delivery: DeliverySection | None = None,
                 database_url: str = "", destinations: tuple[Destination, ...] = (), receive_processes: int = 1) -> None:
        config = make_config(tmp / "data", database_url, receive_processes=receive_processes)
        self.config: Config = replace(
            config,
            destinations=destinations or (Destination("pacs", "PACS", "127.0.0.1", pacs_port),),
            delivery=delivery or DeliverySection(initial_backoff_seconds=0.2, max_backoff_seconds=2.0, timeout_seconds=5.0),
        )
        upgrade(self.config.database_url)
        self.runtime = open_runtime(self.config)
        self.scp = DicomNode(self.config, self.runtime.archive, self.runtime.sessions)
        self.scp.start()
        self.worker = Worker(self.config, self.runtime.sessions, self.runtime.archive, worker_id="test-worker")

    def send(self, folder: Path) -> None:
        files = sorted(str(p) for p in folder.rglob("*.dcm"))
        assert set(store(self.scp.port, files)) == {0}

    def arrive(self, folder: Path) -> None:
        """PACS sends the study; its quiet time passes and its job is queued."""
        self.send(folder)
        queued = self.worker.scan_once(now=utcnow() + timedelta(seconds=10))
        assert [j.state for j in queued] == ["queued"]

    def activate(self, folder: Path) -> int:
        return models.activate(self.runtime.sessions, str(folder), user="test", force=True).id  # random weights: forced

    def answer(self, bundle: Path, study: Path):  # type: ignore[no-untyped-def]
        """``bundle`` active, the study in folder ``study`` received and its job run: the job, done."""
        self.activate(bundle)
        self.arrive(study)
        job = self.worker.claim_once()
        assert job is not None and job.state == "done", job and job.reason
        return job

    def close(self) -> None:
        self.scp.stop()
        self.runtime.close()


@pytest.fixture
def pacs(tmp_path: Path):
    peer = PynetdicomPacs(tmp_path / "pacs")
    yield peer
    peer.stop()


@pytest.fixture
def bundle_a(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_bundle(tmp_path_factory.mktemp("bundle-a"), seed=1, name="bundle-a")


def dsrdump(path: Path) -> str:
    require_tool("dsrdump")
    done = subprocess.run(["dsrdump", "-v", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def dciodvfy_errors(path: Path) -> list[str]:
    require_tool("dciodvfy")
    done = subprocess.run(["dciodvfy", "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def test_study_in_one_sr_out_readable_and_sent_back_triggers_nothing(tmp_path, pacs, bundle_a, phantom_study) -> None:
    node = Node(tmp_path, pacs.port)
    try:
        node.activate(bundle_a)
        node.arrive(phantom_study("axial2d", "seg").folder)
        job = node.worker.claim_once()
        assert job.state == "done", job.reason
        [sr] = pacs.of_class(Comprehensive3DSRStorage)
        [card] = pacs.of_class(SecondaryCaptureImageStorage)
        assert pacs.of_class(SegmentationStorage) == []  # the received SEG is referenced, not re-sent
        assert str(sr.SOPInstanceUID) == job.result["instances"]["sr"]
        assert str(card.SOPInstanceUID) == job.result["instances"]["card"]
        sr_file = next(p for p in pacs.files() if str(sr.SOPInstanceUID) in p.name)
        assert dciodvfy_errors(sr_file) == []
        dump = dsrdump(sr_file)
        for label in ("Imaging Measurement Report", "EGFR Gene Mutation", "Probability", "Negative" if job.result["status"] == "negative" else "Positive"):
            assert label in dump
        # highdicom reads back what `queue show` says
        result = read_sr_result(sr_file)
        assert result.probability == pytest.approx(round(job.result["probability"], 3), abs=1e-9)  # 3 decimals
        assert ("positive" if result.positive else "negative") == job.result["status"]
        for ds in (sr, card):  # PACS lists them with the study
            assert ds.SeriesDate and ds.SeriesTime and ds.ContentDate and ds.ContentTime
        assert sr.StudyInstanceUID == phantom_study("axial2d", "seg").study_uid
        assert sr.VerificationFlag == "UNVERIFIED"
        # PACS routes the SR and the card back to the node (re-encoded by the peer: answered
        # success, or 0xB006 when the bytes differ, first copy kept); nothing runs again
        assert set(store(node.scp.port, [str(p) for p in pacs.files()])) <= {0x0000, 0xB006}
        assert node.worker.scan_once(now=utcnow() + timedelta(seconds=60)) == []
        assert node.worker.claim_once() is None
        with node.runtime.sessions() as s:
            assert [j.state.value for j in s.scalars(select(Job))] == ["done"]
    finally:
        node.close()


def test_rtstruct_lesion_becomes_a_seg_the_sr_references_with_dcmtk_as_pacs(tmp_path, bundle_a, phantom_study) -> None:
    # a PACS that accepts Implicit VR Little Endian only, the one every receiver must: the node's
    # explicit-VR results reach it re-encoded (they were refused, and the delivery failed)
    peer = StorescpPacs(tmp_path / "storescp", syntaxes="+xi")
    node = Node(tmp_path, peer.port)
    try:
        node.activate(bundle_a)
        node.arrive(phantom_study("axial2d", "rtstruct").folder)
        job = node.worker.claim_once()
        assert job.state == "done", job.reason
        received = {str(ds.SOPClassUID): ds for ds in peer.datasets()}
        assert set(received) == {SegmentationStorage, Comprehensive3DSRStorage, SecondaryCaptureImageStorage}
        seg, sr = received[SegmentationStorage], received[Comprehensive3DSRStorage]
        assert str(seg.SOPInstanceUID) == job.result["instances"]["seg"]
        group = hd.sr.srread(next(p for p in peer.files() if dcmread(p).SOPClassUID == Comprehensive3DSRStorage)).content \
            .get_volumetric_roi_measurement_groups()[0]
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.tracking_uid == seg.SegmentSequence[0].TrackingUID
    finally:
        node.close()
        peer.stop()


def test_a_seg_with_an_invalid_tracking_uid_still_gets_its_answer(tmp_path, bundle_a, phantom_study, pacs) -> None:
    # a sender's SEG with a Tracking UID that is not a UID and a blank Tracking ID: the job used
    # to fail three times at its SR; the results name the lesion with the node's own identity
    folder = tmp_path / "study"  # a copy: the phantom study is the session's, shared with other tests
    shutil.copytree(phantom_study("axial2d", "seg").folder, folder)
    [seg_path] = [p for p in folder.rglob("*.dcm") if dcmread(p, stop_before_pixels=True).Modality == "SEG"]
    seg = dcmread(seg_path)
    seg.SegmentSequence[0].TrackingUID, seg.SegmentSequence[0].TrackingID = "1.2.840.10008.0123", " "
    seg.save_as(seg_path)
    node = Node(tmp_path, pacs.port)
    try:
        node.activate(bundle_a)
        node.arrive(folder)
        job = node.worker.claim_once()
        assert job.state == "done" and job.attempts == 1, job.reason
        [sr] = pacs.of_class(Comprehensive3DSRStorage)
        content = hd.sr.Comprehensive3DSR.from_dataset(sr).content
        [group] = content.get_volumetric_roi_measurement_groups() or content.get_planar_roi_measurement_groups()
        assert str(group.tracking_uid) != "1.2.840.10008.0123" and group.tracking_identifier == "Lesion 1"
    finally:
        node.close()


def test_destination_down_is_retried_with_growing_intervals_then_delivered_once(tmp_path, bundle_a, phantom_study) -> None:
    port = free_port()  # nobody listens yet
    node = Node(tmp_path, port, delivery=DeliverySection(initial_backoff_seconds=0.3, max_backoff_seconds=10.0,
                                                        timeout_seconds=2.0, max_attempts=10))
    pacs = None
    try:
        node.activate(bundle_a)
        node.arrive(phantom_study("axial2d", "seg").folder)
        job = node.worker.claim_once()  # the first try fails inside claim_once
        sr_uid = job.result["instances"]["sr"]
        tries: list[tuple[int, float]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with node.runtime.sessions() as s:
                from db.deliveries import deliveries_of_job

                [delivery] = [d for d in deliveries_of_job(s, job.id) if d.sop_instance_uid == sr_uid]
            if delivery.state == "sent":
                break
            if not tries or tries[-1][0] != delivery.attempts:
                tries.append((delivery.attempts, time.monotonic()))
            if delivery.attempts >= 4 and pacs is None:
                pacs = PynetdicomPacs(tmp_path / "late-pacs", port=port)
            node.worker.deliver_due()
            time.sleep(0.05)
        assert delivery.state == "sent" and delivery.attempts >= 5, delivery
        gaps = [b[1] - a[1] for a, b in zip(tries, tries[1:])]
        assert len(gaps) >= 3 and gaps[2] > gaps[0], f"intervals between tries do not grow: {gaps}"
        assert [str(ds.SOPInstanceUID) for ds in pacs.of_class(Comprehensive3DSRStorage)] == [sr_uid]
    finally:
        node.close()
        if pacs:
            pacs.stop()


def test_a_job_retried_after_its_results_were_archived_reuses_them(tmp_path, pacs, bundle_a, phantom_study) -> None:
    """A worker killed after archiving a job's SEG, SR and card but before marking it done
    leaves the job running; its lease expires, the job is retried: the same SR, SEG and card
    (same SOP Instance UIDs) are sent, and the archive holds one of each. A rerun is a new job
    and builds new ones."""
    from db.models import Instance

    node = Node(tmp_path, pacs.port)
    try:
        node.activate(bundle_a)
        node.arrive(phantom_study("axial2d", "rtstruct").folder)
        first = node.worker.claim_once()
        assert first.state == "done"
        with node.runtime.sessions.begin() as s:  # the row as a worker SIGKILLed before finish_job leaves it
            job = s.get(Job, first.id)
            job.state, job.result, job.finished_at = JobState.RUNNING, None, None
            job.lease_owner, job.lease_expires_at = "killed-worker", utcnow() - timedelta(seconds=1)
        node.worker.scan_once()  # the lease has expired: swept back to queued (the same job, not a new one)
        retried = node.worker.claim_once()
        assert retried.id == first.id and retried.state == "done" and retried.attempts == 2
        assert retried.result["instances"] == first.result["instances"]
        assert all(first.result["instances"].values())  # SR, SEG (from the RTSTRUCT) and card
        with node.runtime.sessions() as s:
            own = s.scalars(select(Instance.sop_instance_uid).where(Instance.origin == "node")).all()
        assert sorted(own) == sorted(first.result["instances"].values())
        archived = [p for p in node.config.storage.archive_path.rglob("*.dcm")
                    if dcmread(p, stop_before_pixels=True).SOPInstanceUID in first.result["instances"].values()]
        assert len(archived) == 3
        srs = {str(ds.SOPInstanceUID) for ds in pacs.of_class(Comprehensive3DSRStorage)}
        assert srs == {first.result["instances"]["sr"]}
        with node.runtime.sessions.begin() as s:
            replay(s, first.study_uid, rerun=True)
        rerun = node.worker.claim_once()
        assert rerun.id != first.id and set(rerun.result["instances"].values()).isdisjoint(first.result["instances"].values())
    finally:
        node.close()


class _HoldingPacs(PynetdicomPacs):
    """A PACS that holds the SR's C-STORE open until ``hold()`` returns (its answer waits), and
    notes what ``look()`` saw when the SR arrived."""

    def __init__(self, folder: Path, look, hold) -> None:  # type: ignore[no-untyped-def]
        self.look, self.hold, self.seen = look, hold, {}
        super().__init__(folder)

    def _on_store(self, event) -> int:  # type: ignore[no-untyped-def]
        if event.dataset.SOPClassUID == Comprehensive3DSRStorage and not self.seen:
            self.seen.update(self.look())
            self.seen["held until"] = self.hold()
        return super()._on_store(event)


def test_the_sr_is_sent_while_the_job_still_draws_its_card(tmp_path, bundle_a, phantom_study) -> None:
    """Issue 30: the SR leaves as soon as it is archived. It reaches PACS while its job is still
    running and before the card is archived; PACS holds the SR's C-STORE open until the node has
    archived the card: the job waits for the SR's answer 1 s at most, then draws the card while
    the SR is in flight (a job that waited for the answer without bound would time out here). The
    early sends are the job's deliveries, each sent in one try, and PACS has each result once,
    the SR before the card."""
    from db.deliveries import deliveries_of_job
    from db.models import Instance

    holder: dict[str, Node] = {}

    def card_archived() -> bool:
        with holder["node"].runtime.sessions() as s:
            return s.scalar(select(Instance.id).where(Instance.origin == "node",
                                                      Instance.sop_class_uid == SecondaryCaptureImageStorage)) is not None

    def look() -> dict[str, object]:
        with holder["node"].runtime.sessions() as s:
            state = s.scalars(select(Job.state)).one().value
        return {"job": state}

    def hold() -> str:
        wait_for(card_archived, timeout=4.0, what="the card archived while the SR's C-STORE is open")
        return "card archived"

    pacs = _HoldingPacs(tmp_path / "pacs", look, hold)
    node = holder["node"] = Node(tmp_path, pacs.port)
    try:
        job = node.answer(bundle_a, phantom_study("axial2d", "seg").folder)
        assert pacs.seen == {"job": "running", "held until": "card archived"}
        received = [str(ds.SOPInstanceUID) for ds in pacs.received]
        instances = job.result["instances"]
        assert received == [instances["sr"], instances["card"]]  # each once, the SR first
        with node.runtime.sessions() as s:
            sent = [(d.sop_instance_uid, d.state, d.attempts) for d in deliveries_of_job(s, job.id)]
        assert sorted(sent) == sorted([(instances["sr"], "sent", 1), (instances["card"], "sent", 1)])
    finally:
        node.close()
        pacs.stop()


class _Hangup:
    """A TCP port that accepts and at once closes every connection, counting them: a
    destination whose every association fails."""

    def __init__(self) -> None:
        import socket

        self.accepted = 0
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.socket.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_a_destination_failing_during_the_job_gets_one_early_try_and_the_retry_path(
        tmp_path, pacs, bundle_a, phantom_study) -> None:
    """Two destinations, one whose associations all fail: the SR and the card go to the good one
    as they are archived (sent, one try each); the failing one is tried once during the job (the
    SR), not again for the card, and both its deliveries are left to the delivery queue, which
    tries each once when the job is done and then waits its backoff."""
    from db.deliveries import deliveries_of_job

    down = _Hangup()
    node = Node(tmp_path, pacs.port, destinations=(Destination("pacs", "PACS", "127.0.0.1", pacs.port),
                                                   Destination("down", "DOWN", "127.0.0.1", down.port)))
    try:
        job = node.answer(bundle_a, phantom_study("axial2d", "seg").folder)
        instances = job.result["instances"]
        with node.runtime.sessions() as s:
            rows = {(d.destination, d.sop_instance_uid): (d.state, d.attempts) for d in deliveries_of_job(s, job.id)}
        assert rows == {("pacs", instances["sr"]): ("sent", 1), ("pacs", instances["card"]): ("sent", 1),
                        ("down", instances["sr"]): ("retrying", 1), ("down", instances["card"]): ("retrying", 1)}
        assert down.accepted == 3  # the SR during the job; the SR and the card from the queue
        assert [str(ds.SOPInstanceUID) for ds in pacs.received] == [instances["sr"], instances["card"]]
    finally:
        node.close()
        down.socket.close()


def test_a_job_retried_after_its_sr_was_sent_draws_only_the_missing_card(tmp_path, pacs, bundle_a, phantom_study) -> None:
    """A worker killed after it archived and sent the SEG and the SR, before the card: the retry
    reuses the SEG and the SR (same UIDs, same files), draws the card with the UID the first
    attempt would have given it, and delivers all three; the archive holds one of each."""
    from db.deliveries import deliveries_of_job
    from db.models import Delivery, Instance

    node = Node(tmp_path, pacs.port)
    try:
        first = node.answer(bundle_a, phantom_study("axial2d", "rtstruct").folder)
        instances = first.result["instances"]
        files = {}
        with node.runtime.sessions.begin() as s:  # the rows a worker SIGKILLed after the SR leaves
            for kind in ("seg", "sr", "card"):
                files[kind] = node.runtime.archive.path(s.scalar(select(Instance.path).where(
                    Instance.sop_instance_uid == instances[kind])))
            kept = {kind: files[kind].read_bytes() for kind in ("seg", "sr")}
            s.execute(Delivery.__table__.delete().where(Delivery.job_id == first.id))
            s.execute(Instance.__table__.delete().where(Instance.sop_instance_uid == instances["card"]))
            files["card"].unlink()
            job = s.get(Job, first.id)
            job.state, job.result, job.finished_at = JobState.RUNNING, None, None
            job.lease_owner, job.lease_expires_at = "killed-worker", utcnow() - timedelta(seconds=1)
        node.worker.scan_once()
        retried = node.worker.claim_once()
        assert retried.id == first.id and retried.state == "done" and retried.attempts == 2
        assert retried.result["instances"] == instances
        assert {kind: files[kind].read_bytes() for kind in ("seg", "sr")} == kept  # reused, not rebuilt
        assert dcmread(files["card"]).SOPInstanceUID == instances["card"]
        with node.runtime.sessions() as s:
            own = s.scalars(select(Instance.sop_instance_uid).where(Instance.origin == "node")).all()
            states = {d.sop_instance_uid: d.state for d in deliveries_of_job(s, first.id)}
        assert sorted(own) == sorted(instances.values())
        assert states == {uid: "sent" for uid in instances.values()}
        assert [str(ds.SOPInstanceUID) for ds in pacs.of_class(SecondaryCaptureImageStorage)] == [instances["card"]] * 2
    finally:
        node.close()


def test_no_active_model_keeps_jobs_queued_with_the_reason(tmp_path, pacs, phantom_study) -> None:
    node = Node(tmp_path, pacs.port)
    try:
        node.arrive(phantom_study("axial2d", "seg").folder)
        assert node.worker.claim_once() is None
        with node.runtime.sessions() as s:
            [job] = s.scalars(select(Job)).all()
            assert (job.state.value, job.reason) == ("queued", "no active model")
    finally:
        node.close()


def test_bundle_swapped_while_a_job_runs_then_replay_resends_and_rerun_uses_the_new_one(
    tmp_path, pacs, bundle_a, phantom_study
) -> None:
    bundle_b = write_random_bundle(tmp_path / "bundle-b", seed=2, name="bundle-b")
    node = Node(tmp_path, pacs.port)
    try:
        a = node.activate(bundle_a)
        node.arrive(phantom_study("axial2d", "seg").folder)
        finished: list = []
        runner = threading.Thread(target=lambda: finished.append(node.worker.claim_once()))
        runner.start()
        def running() -> bool:
            with node.runtime.sessions() as s:
                return s.scalars(select(Job)).one().state.value == "running"

        wait_for(running, 30, "the job running", every=0.02)
        b = node.activate(bundle_b)  # while the job runs
        with node.runtime.sessions() as s:
            assert s.scalars(select(Job)).one().state.value == "running"
        runner.join(120)
        [first] = finished
        assert first.state == "done" and first.model_id == a and first.result["model"]["name"] == "bundle-a"
        # replay re-sends the stored SR: same SOP Instance UID, nothing predicted again
        with node.runtime.sessions.begin() as s:
            resend, created = replay(s, str(first.id))
        assert created and resend.resend_only
        second = node.worker.claim_once()
        assert second.state == "done" and second.model_id is None
        srs = [str(ds.SOPInstanceUID) for ds in pacs.of_class(Comprehensive3DSRStorage)]
        assert srs == [first.result["instances"]["sr"]] * 2
        # --rerun predicts again with the bundle active now
        with node.runtime.sessions.begin() as s:
            rerun, _ = replay(s, first.study_uid, rerun=True)
        third = node.worker.claim_once()
        assert third.model_id == b and third.result["model"]["name"] == "bundle-b"
        assert third.result["instances"]["sr"] != first.result["instances"]["sr"]
    finally:
        node.close()


def test_activation_checks_the_bundle_and_never_unpickles(tmp_path, pacs) -> None:
    node = Node(tmp_path, pacs.port)
    try:
        tampered = write_random_bundle(tmp_path / "tampered")
        with open(tampered / "fold1.pt", "ab") as handle:
            handle.write(b"\0")
        with pytest.raises(BundleError, match="fold 1: fold1.pt has sha256"):
            node.activate(tampered)
        misfit = write_random_bundle(tmp_path / "misfit")
        manifest = (misfit / "manifest.json").read_text().replace('"input_shape": [\n    5,\n    3,\n    32\n  ]',
                                                                '"input_shape": [\n    5,\n    3,\n    96\n  ]')
        (misfit / "manifest.json").write_text(manifest)
        with pytest.raises(BundleError, match="input_shape \\[5, 3, 96\\] does not match the preprocessing"):
            node.activate(misfit)
        with node.runtime.sessions() as s:
            assert bundles.list_bundles(s) == []
        # weights that are a pickled object, with a matching sha256: refused at load, nothing executed
        import pickle

        from pipeline.model.bundle import Manifest, sha256_of
        from pipeline.model.infer import FoldEnsemble

        evil = write_random_bundle(tmp_path / "evil", folds=1)
        marker = tmp_path / "executed"
        (evil / "fold0.pt").write_bytes(pickle.dumps(_Exploit(str(marker))))
        manifest = Manifest.read(evil)
        fixed = replace(manifest, folds=(replace(manifest.folds[0], sha256=sha256_of(evil / "fold0.pt")),))
        fixed.write(evil)
        with pytest.raises(BundleError, match="not a state_dict"):
            FoldEnsemble.load(evil)
        # and activation loads every fold first: refused there, not by every job after it
        with pytest.raises(BundleError, match="fold 0: fold0.pt is not a state_dict of this network"):
            node.activate(evil)
        with node.runtime.sessions() as s:
            assert bundles.list_bundles(s) == []
        assert not marker.exists()
    finally:
        node.close()


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def test_a_failing_study_fails_once_with_its_reason_and_a_broken_bundle_stops_after_max_attempts(
    tmp_path, pacs, phantom_study
) -> None:
    node = Node(tmp_path, pacs.port)
    try:
        bundle = write_random_bundle(tmp_path / "bundle")
        node.activate(bundle)
        study = phantom_study("axial2d", "seg")
        node.arrive(study.folder)
        # the mask's file is gone from the archive: the pipeline cannot select, the job fails at once
        archive = node.config.storage.archive_path / study.study_uid
        [mask_file] = [p for p in archive.rglob("*.dcm") if dcmread(p, stop_before_pixels=True).Modality == "SEG"]
        mask_file.unlink()
        job = node.worker.claim_once()
        assert job.state == "failed" and job.attempts == 1
        assert "no" in job.reason and "\n" not in job.reason and study.study_uid in job.reason, job.reason
        assert node.worker.claim_once() is None  # failed stays failed
        # a bundle whose weights vanished is not the study's fault: retried, failed after max_attempts
        with node.runtime.sessions.begin() as s:
            retry, _ = replay(s, study.study_uid, rerun=True)
        (bundle / "fold0.pt").unlink()
        restarted = Worker(node.config, node.runtime.sessions, node.runtime.archive, worker_id="restarted")
        states = []
        for _ in range(node.config.worker.max_attempts):
            states.append(restarted.claim_once().state)
        assert states == ["queued"] * (node.config.worker.max_attempts - 1) + ["failed"]
        with node.runtime.sessions() as s:
            final = get_job(s, retry.id)
        assert final.attempts == node.config.worker.max_attempts and "fold 0" in final.reason
        assert restarted.claim_once() is None
        assert pacs.received == []
    finally:
        node.close()


def test_two_workers_on_postgresql_run_each_job_once(tmp_path, pacs, bundle_a, phantom_study, pg_url) -> None:
    node = Node(tmp_path, pacs.port, database_url=pg_url)
    try:
        node.activate(bundle_a)
        studies = [phantom_study("axial2d", "seg", patient_index=i, seed=20 + i) for i in range(3)]
        for study in studies:
            node.send(study.folder)
        assert len(node.worker.scan_once(now=utcnow() + timedelta(seconds=10))) == 3
        workers = [Worker(node.config, node.runtime.sessions, node.runtime.archive, worker_id=f"w{i}") for i in range(2)]
        ran: dict[str, list[int]] = {w.worker_id: [] for w in workers}

        def drain(worker: Worker) -> None:
            while (job := worker.claim_once()) is not None:
                ran[worker.worker_id].append(job.id)

        threads = [threading.Thread(target=drain, args=(w,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        claimed = sorted(ran["w0"] + ran["w1"])
        assert len(claimed) == 3 and len(set(claimed)) == 3, ran
        with node.runtime.sessions() as s:
            jobs = s.scalars(select(Job)).all()
            assert {(j.state.value, j.attempts) for j in jobs} == {("done", 1)}
        srs = pacs.of_class(Comprehensive3DSRStorage)
        assert sorted(str(sr.StudyInstanceUID) for sr in srs) == sorted(s.study_uid for s in studies)
    finally:
        node.close()
