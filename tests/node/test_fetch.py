"""Query/retrieve on demand: ``egfr-node fetch --accession`` asks a source (Orthanc on
loopback holding a phantom study) for the study, retrieves its MR series and mask by C-MOVE,
C-GET or WADO-RS, and the node predicts as for a push: the SR goes back to that Orthanc (by
C-STORE, or by STOW-RS for the DICOMweb case)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from db.migrate import upgrade
from db.models import AuditEntry, utcnow
from dicom_node import bundles as models
from dicom_node.cli import main
from dicom_node.config import load_config
from dicom_node.receive.server import DicomNode
from dicom_node.store.open import open_runtime
from dicom_node.worker import Worker
from tests.node.bundles import write_random_bundle
from tests.node.peers import Orthanc
from tests.node.process import free_port, write_config
from tests.waiting import wait_for, wait_for_http


def write_node_config(folder: Path, port: int, orthanc: Orthanc, retrieve: str) -> Path:
    """The node's config: Orthanc as its source (retrieving by ``retrieve``) and destination
    (by STOW-RS when ``retrieve`` is wado, else by C-STORE)."""
    peer = (f'dicomweb_url = "{orthanc.dicomweb_url}"\n' if retrieve == "wado" else
            f'ae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n')
    path = write_config(folder, port, stable=1.0)
    path.write_text(path.read_text().replace("[worker]\n", "[worker]\nfetch_after_seconds = 0.5\n") + f"""
[delivery]
initial_backoff_seconds = 0.2
timeout_seconds = 10.0
[[sources]]
name = "orthanc"
retrieve = "{retrieve}"
{peer}
[[destinations]]
name = "orthanc"
{peer}
""")
    return path


class FetchingNode:
    """The node (SCP + worker, in this process) beside an Orthanc that knows it but routes nothing."""

    def __init__(self, tmp: Path, retrieve: str, *, masks_only: bool = False) -> None:
        port = free_port()
        self.orthanc = Orthanc(tmp / "orthanc", node_port=port, route=masks_only, masks_only=masks_only, dicomweb=True)
        self.config_path = write_node_config(tmp, port, self.orthanc, retrieve)
        self.config = load_config(self.config_path)
        upgrade(self.config.database_url)
        self.runtime = open_runtime(self.config)
        self.scp = DicomNode(self.config, self.runtime.archive, self.runtime.sessions)
        self.scp.start()
        self.worker = Worker(self.config, self.runtime.sessions, self.runtime.archive, worker_id="test-worker")

    def hold(self, study: object) -> list[Path]:
        """An active bundle, and the phantom ``study`` in Orthanc (not in the node); its files."""
        models.activate(self.runtime.sessions, str(write_random_bundle(self.config_path.parent / "bundle")), user="test",
                        force=True)
        files = sorted(study.folder.rglob("*.dcm"))
        for file in files:
            self.orthanc.upload(file)
        return files

    def fetch(self, *args: str) -> int:
        return main(["--config", str(self.config_path), "fetch", *args])

    def close(self) -> None:
        self.scp.stop()
        self.runtime.close()
        self.orthanc.stop()


@pytest.mark.parametrize("retrieve", ["c-move", "c-get", "wado"])
def test_fetch_by_accession_brings_the_study_and_the_sr_goes_back(tmp_path: Path, retrieve: str, phantom_study,
                                                                  capsys: pytest.CaptureFixture) -> None:
    node = FetchingNode(tmp_path, retrieve)
    try:
        files = node.hold(phantom_study("axial2d", "seg"))
        first = dcmread(files[0], stop_before_pixels=True)
        accession, study_uid = str(first.AccessionNumber), str(first.StudyInstanceUID)

        assert node.fetch("--accession", "NO-SUCH-ACC") == 1
        assert "no study on orthanc matches" in capsys.readouterr().err
        assert node.fetch("--accession", accession, "--list") == 0
        listed = capsys.readouterr().out
        assert study_uid in listed and "MR×" in listed and "SEG×1" in listed

        assert node.fetch("--accession", accession) == 0, capsys.readouterr().err
        said = capsys.readouterr().out
        done = "instances sent to the node" if retrieve == "c-move" else "instances stored"
        assert f"{len(files)} {done}" in said and "0 failed" in said, said
        archived = {p.stem for p in node.config.storage.archive_path.rglob("*.dcm")}
        assert archived == {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}

        # as if pushed: the study is complete by its content, queued, predicted, and the SR sent back
        [queued] = node.worker.scan_once(now=utcnow() + timedelta(seconds=5))
        assert queued.state == "queued"
        job = node.worker.claim_once()
        assert job.state == "done", job.reason
        node.worker.deliver_due()
        held = {node.orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                for i in node.orthanc.get("/instances")}
        assert job.result["instances"]["sr"] in held and job.result["instances"]["card"] in held

        # fetching again (the node's own SR is in that study now) brings nothing new, no second job
        assert node.fetch("--study", study_uid) == 0
        again = capsys.readouterr().out
        assert "0 failed" in again and (retrieve == "c-move" or " 0 instances stored" in again), again
        assert node.worker.scan_once(now=utcnow() + timedelta(seconds=5)) == []
        with node.runtime.sessions() as s:
            audits = s.scalars(select(AuditEntry).where(AuditEntry.action == "fetch")).all()
        assert len(audits) == 2 and all(study_uid in a.target for a in audits)
    finally:
        node.close()


@pytest.mark.parametrize("retrieve", ["c-move", "wado"])
def test_orthanc_routing_only_the_mask_gives_a_correct_sr(tmp_path: Path, retrieve: str, phantom_study) -> None:
    """The usual routing rule forwards only the mask: the node fetches the images the mask names
    from its source, predicts, and the SR names those images."""
    from dicom_node.report.sr import read_sr_result

    node = FetchingNode(tmp_path, retrieve, masks_only=True)  # deploy/orthanc's script with MASKS_ONLY = true
    try:
        files = node.hold(phantom_study("axial2d", "rtstruct"))
        # Orthanc routes the stable study: only its RTSTRUCT comes
        wait_for(lambda: list(node.config.storage.archive_path.rglob("*.dcm")), 60, "the mask routed by Orthanc")
        with node.runtime.sessions() as s:
            from db.models import Instance

            assert [i.sop_class_uid for i in s.scalars(select(Instance))] == ["1.2.840.10008.5.1.4.1.1.481.3"]

        def queued() -> bool:
            return bool(node.worker.scan_once(now=utcnow() + timedelta(seconds=2)))

        wait_for(queued, 60, "the study to be complete after the node fetched the images", every=0.2)
        node.worker.fetcher.join()
        job = node.worker.claim_once()
        assert job.state == "done", job.reason
        assert "complete by content" in (job.queued_because or "")
        node.worker.deliver_due()
        sr_uid = job.result["instances"]["sr"]
        [sr_id] = [i for i in node.orthanc.get("/instances")
                   if node.orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == sr_uid]
        sr_file = tmp_path / "sr.dcm"
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{node.orthanc.http_port}/instances/{sr_id}/file") as r:
            sr_file.write_bytes(r.read())
        result = read_sr_result(sr_file)
        assert 0.0 <= result.probability <= 1.0 and ("positive" if result.positive else "negative") == job.result["status"]
        images = {str(ds.SOPInstanceUID) for ds in (dcmread(f, stop_before_pixels=True) for f in files) if ds.Modality == "MR"}
        evidence = {str(item.ReferencedSOPInstanceUID) for study_item in dcmread(sr_file).CurrentRequestedProcedureEvidenceSequence
                    for series in study_item.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
        assert evidence & images  # the SR names the images the node fetched
        with node.runtime.sessions() as s:
            [audit] = s.scalars(select(AuditEntry).where(AuditEntry.action == "fetch")).all()
        assert audit.user == "node" and "0 failed" in audit.outcome
    finally:
        node.close()


def test_the_console_searches_a_source_and_fetches_a_study(tmp_path: Path, phantom_study) -> None:
    """An admin searches by accession number on the Fetch page, sees the study's series (no
    patient name), presses "Fetch and predict"; the study arrives and both steps are audited."""
    from dataclasses import replace

    import requests

    from dicom_node.web.auth import add_user
    from dicom_node.web.server import ConsoleProcess

    node = FetchingNode(tmp_path, "c-move")
    config = replace(node.config, web=replace(node.config.web, enabled=True, port=free_port()))
    add_user(config.web_users_path, "admin", "fetch it please")
    console = ConsoleProcess(config)
    console.start()
    try:
        study = phantom_study("axial2d", "seg")
        files = sorted(study.folder.rglob("*.dcm"))
        for file in files:
            node.orthanc.upload(file)
        first = dcmread(files[0], stop_before_pixels=True)
        url = f"http://127.0.0.1:{config.web.port}"

        wait_for_http(url + "/login", 60, "the console", alive=console.process.is_alive)
        web = requests.Session()
        csrf = web.post(url + "/api/session", json={"user": "admin", "password": "fetch it please"}, timeout=30).json()["csrf_token"]
        page = web.post(url + "/fetch/search", data={"csrf_token": csrf, "accession": str(first.AccessionNumber)}, timeout=60)
        assert page.status_code == 200
        assert str(first.StudyInstanceUID) in page.text and "Fetch and predict" in page.text and "SEG&times;1" in page.text
        assert str(first.PatientName) not in page.text
        done = web.post(url + "/fetch/retrieve", data={"csrf_token": csrf, "study_uid": str(first.StudyInstanceUID)},
                        timeout=60)
        assert done.status_code == 200 and "started" in done.text

        def audited() -> bool:
            with node.runtime.sessions() as s:
                return bool(s.scalars(select(AuditEntry).where(AuditEntry.action == "fetch")).all())

        wait_for(audited, 60, "the fetch's outcome in the audit trail")
        with node.runtime.sessions() as s:
            entries = {a.action: a for a in s.scalars(select(AuditEntry))}
        assert entries["fetch"].user == "admin" and "0 failed" in entries["fetch"].outcome, entries["fetch"].outcome
        assert entries["fetch-query"].outcome == "1 studies" and str(first.AccessionNumber) not in entries["fetch-query"].target
        assert len(list(node.config.storage.archive_path.rglob("*.dcm"))) == len(files)
        # the page's search needs the admin's CSRF token
        assert web.post(url + "/fetch/search", data={"accession": "X"}, timeout=30).status_code == 403
    finally:
        console.stop()
        node.close()
