"""PACS auto-routing for real: a private Orthanc on loopback ports, configured with
deploy/orthanc/, routes a phantom study to the node when stable and stores the SR back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path


from db.migrate import upgrade
from dicom_node import bundles as models
from dicom_node.config import Destination
from dicom_node.store.open import open_runtime
from dicom_node.receive.server import DicomNode
from dicom_node.worker import Worker
from tests.conftest import make_config
from tests.node.bundles import write_random_bundle
from tests.node.peers import Orthanc
from tests.waiting import wait_for

def test_orthanc_routes_a_stable_study_to_the_node_and_stores_the_sr(tmp_path: Path, phantom_study) -> None:
    config = make_config(tmp_path / "data")
    upgrade(config.database_url)
    runtime = open_runtime(config)
    node = DicomNode(config, runtime.archive, runtime.sessions)
    node.start()
    orthanc = Orthanc(tmp_path, node_port=node.port)
    node_config = replace(config, destinations=(Destination("orthanc", "ORTHANC", "127.0.0.1", orthanc.dicom_port),))
    worker = Worker(node_config, runtime.sessions, runtime.archive)
    try:
        models.activate(runtime.sessions, str(write_random_bundle(tmp_path / "bundle")), user="test", force=True)
        worker.start()
        study = phantom_study("axial2d", "rtstruct")
        for file in sorted(study.folder.rglob("*.dcm")):
            orthanc.upload(file)
        # the results are back (SR, SEG, card) and Orthanc's study is stable again with them: its
        # route on stable has run for them (the node's own instances make no job)
        def results_back_and_stable() -> list:
            modalities = orthanc.series_modalities()
            kinds = {m for m, _ in modalities}
            done = {"SR", "SEG"} <= kinds and kinds & {"OT", "SC"} and all(s["IsStable"] for s in orthanc.get("/studies?expand"))
            return modalities if done else []

        modalities = wait_for(results_back_and_stable, 120, "the results back at Orthanc, its study stable", every=0.5)
        assert [m for m, _ in modalities].count("SR") == 1, modalities
        assert ("SEG", "Lesion SEG from RTSTRUCT by egfr-node - research use") in modalities
        assert [m for m, _ in modalities].count("OT") + [m for m, _ in modalities].count("SC") == 1, modalities
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
