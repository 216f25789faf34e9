"""A node as an admin on call finds it: the SCP and a worker on loopback, a real Orthanc as
the PACS results go to (and the source it may fetch from), a second destination that is down, a bundle active, and the console
in its own process (``ConsoleProcess``, what ``egfr-node serve`` starts) with one user."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import requests

from db.migrate import upgrade
from dicom_node import bundles as models
from dicom_node.config import Config, Destination, Source
from dicom_node.store.open import Runtime, open_runtime
from dicom_node.receive.server import DicomNode
from dicom_node.web.auth import add_user
from dicom_node.web.server import ConsoleProcess
from dicom_node.worker import Worker
from tests.conftest import make_config
from tests.node.bundles import write_random_bundle
from tests.node.peers import Orthanc
from tests.node.process import free_port
from tests.waiting import wait_for_http

USER, PASSWORD = "oncall", "night shift 0300"


@dataclass
class ConsoleNode:
    config: Config
    runtime: Runtime
    node: DicomNode
    worker: Worker
    orthanc: Orthanc
    console: ConsoleProcess
    tmp: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config.web.port}"

    def signed_in(self) -> tuple[requests.Session, str]:
        """An HTTP session signed in through the API, and its CSRF token."""
        session = requests.Session()
        answer = session.post(self.url + "/api/session", json={"user": USER, "password": PASSWORD}, timeout=30)
        answer.raise_for_status()
        return session, answer.json()["csrf_token"]


@pytest.fixture(scope="package")
def console_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleNode]:
    tmp = tmp_path_factory.mktemp("console")
    base = make_config(tmp / "data", port=free_port())
    orthanc = Orthanc(tmp, node_port=base.node.port, route=False)  # knows the node (a source), routes nothing
    config = replace(
        base,
        worker=replace(base.worker, study_stable_seconds=4.0),
        delivery=replace(base.delivery, max_attempts=1, timeout_seconds=5.0, scan_interval_seconds=0.5),
        destinations=(Destination("pacs", "ORTHANC", "127.0.0.1", orthanc.dicom_port),
                      Destination("offline", "OFFLINE", "127.0.0.1", free_port())),
        sources=(Source("pacs", "ORTHANC", "127.0.0.1", orthanc.dicom_port),),
    )
    upgrade(config.database_url)
    runtime = open_runtime(config)
    node = DicomNode(config, runtime.archive, runtime.sessions)
    node.start()
    config = replace(config, node=replace(config.node, port=node.port),
                     web=replace(config.web, enabled=True, port=free_port(), refresh_seconds=1.0))
    worker = Worker(config, runtime.sessions, runtime.archive)
    # its fold assignment names a training patient by the cohort's ID, as a CSV cohort's does
    splits = [{"patient_id": "MRN-0042", "study_uid": "1.2.826.0.1.3680043.9.7.42", "group": "MRN-0042", "fold": 0}]
    models.activate(runtime.sessions, str(write_random_bundle(tmp / "bundle-1", version="1.0.0",
                                                              training={"splits": splits})), user="test", force=True)
    worker.start()
    add_user(config.web_users_path, USER, PASSWORD)
    console = ConsoleProcess(config)
    console.start()
    here = ConsoleNode(config, runtime, node, worker, orthanc, console, tmp)
    wait_for_http(here.url + "/login", 60, "the console process", alive=console.process.is_alive)
    try:
        yield here
    finally:
        console.stop()
        worker.stop()
        node.stop()
        orthanc.stop()
        runtime.close()
