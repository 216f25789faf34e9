"""PACS auto-routing for real: a private Orthanc on loopback ports, configured with
deploy/orthanc/, routes a phantom study to the node when stable and stores the SR back."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest

from db.migrate import upgrade
from dicom_node.commands import models
from dicom_node.config import Destination
from dicom_node.runtime import open_runtime
from dicom_node.scp import DicomNode
from dicom_node.worker import Worker
from tests.conftest import make_config
from tests.node.bundles import write_random_bundle
from tests.node.process import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "orthanc"


def _orthanc() -> str:
    path = shutil.which("Orthanc")
    if path is None:
        pytest.fail("Orthanc not found: install the Debian package orthanc (see README; .ci/run does)")
    return path


class Orthanc:
    def __init__(self, tmp: Path, node_port: int) -> None:
        config = json.loads((DEPLOY / "orthanc.json").read_text())
        self.dicom_port, self.http_port = free_port(), free_port()
        config.update(
            StorageDirectory=str(tmp / "orthanc-db"), IndexDirectory=str(tmp / "orthanc-db"),
            DicomPort=self.dicom_port, HttpPort=self.http_port, StableAge=1,
            LuaScripts=[str(DEPLOY / "route-to-egfr-node.lua")],
            DicomModalities={"egfr-node": ["EGFR_NODE", "127.0.0.1", node_port]},
        )
        path = tmp / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = open(tmp / "orthanc.log", "w")
        self.process = subprocess.Popen([_orthanc(), str(path)], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("Orthanc did not start")

    def get(self, path: str):  # type: ignore[no-untyped-def]
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return json.loads(response.read())

    def upload(self, file: Path) -> None:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}/instances", data=file.read_bytes(),
                                         method="POST", headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.loads(response.read())["Status"] in ("Success", "AlreadyStored")

    def series_modalities(self) -> list[tuple[str, str]]:
        out = []
        for study in self.get("/studies"):
            for series in self.get(f"/studies/{study}/series"):
                tags = series["MainDicomTags"]
                out.append((tags.get("Modality", ""), tags.get("SeriesDescription", "")))
        return sorted(out)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(20)
        self.log.close()


def test_orthanc_routes_a_stable_study_to_the_node_and_stores_the_sr(tmp_path: Path, phantom_study) -> None:
    config = make_config(tmp_path / "data")
    upgrade(config.database_url)
    runtime = open_runtime(config)
    node = DicomNode(config, runtime.archive, runtime.sessions)
    node.start()
    orthanc = Orthanc(tmp_path, node.port)
    node_config = replace(config, destinations=(Destination("orthanc", "ORTHANC", "127.0.0.1", orthanc.dicom_port),))
    worker = Worker(node_config, runtime.sessions, runtime.archive)
    try:
        models.activate(runtime.sessions, str(write_random_bundle(tmp_path / "bundle")))
        worker.start()
        study = phantom_study("axial2d", "rtstruct")
        for file in sorted(study.folder.rglob("*.dcm")):
            orthanc.upload(file)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "SR" not in [m for m, _ in orthanc.series_modalities()]:
            time.sleep(0.5)
        time.sleep(3)  # Orthanc's study is stable again with the results: nothing more may be routed
        modalities = orthanc.series_modalities()
        assert [m for m, _ in modalities].count("SR") == 1, modalities
        assert ("SEG", "Lesion SEG from RTSTRUCT by egfr-node - research use") in modalities
        assert [m for m, _ in modalities].count("OT") + [m for m, _ in modalities].count("SC") <= 1
        from sqlalchemy import select

        from db.models import Job

        with runtime.sessions() as s:
            jobs = s.scalars(select(Job)).all()
            assert [j.state.value for j in jobs] == ["done"], [(j.state.value, j.reason) for j in jobs]
    finally:
        worker.stop()
        node.stop()
        orthanc.stop()
        runtime.close()
