"""STOW-RS into the node, as a DICOMweb archive or Orthanc sends: ``egfr-node web`` with
``[web] stow_enabled`` in its own process, a sender's token, real HTTP on loopback. The same
promises as C-STORE: durable before the response (SIGKILL mid-STOW loses nothing reported
stored), whole datasets only, the same duplicate and conflict rules, the per-instance outcome
in the response; closed without a token."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from pydicom import dcmread, dcmwrite
from pydicom.dataset import Dataset
from sqlalchemy import select

from db.engine import make_engine, make_sessionmaker
from db.models import AuditEntry, Instance
from dicom_node.config import load_config
from tests.dicom_factory import mr_series
from tests.node.peers import Orthanc
from tests.node.process import cli, free_port
from tests.waiting import wait_for, wait_for_http

BOUNDARY = "egfr-test-boundary"
DICOM_PARTS = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
MB = 2**20


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def multipart(parts: list[bytes], *, close: bool = True, media: str = "application/dicom") -> bytes:
    body = b"".join(b"--%s\r\nContent-Type: %s\r\n\r\n%s\r\n" % (BOUNDARY.encode(), media.encode(), p) for p in parts)
    return body + (b"--%s--\r\n" % BOUNDARY.encode() if close else b"")


@dataclass
class StowNode:
    config_path: Path
    port: int
    token: str
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/dicomweb"

    def start(self) -> None:
        self.log = open(self.config_path.parent / "web.log", "a")
        self.process = subprocess.Popen([sys.executable, "-m", "dicom_node.cli", "--config", str(self.config_path), "web"],
                                        stdout=self.log, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[2])
        wait_for_http(f"http://127.0.0.1:{self.port}/login", 60, "egfr-node web with STOW-RS",
                      alive=lambda: self.process.poll() is None)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(20)
        self.log.close()

    def post(self, body: bytes | Iterator[bytes], *, study: str = "", token: str | None = None,
             content_type: str = DICOM_PARTS) -> requests.Response:
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        if (token or self.token) and token != "":
            headers["Authorization"] = f"Bearer {token or self.token}"
        return requests.post(f"{self.url}/studies" + (f"/{study}" if study else ""), data=body, headers=headers,
                             timeout=120)

    def instances(self) -> dict[str, Instance]:
        config = load_config(self.config_path)
        engine = make_engine(config.database_url)
        try:
            with make_sessionmaker(engine)() as s:
                return {row.sop_instance_uid: row for row in s.scalars(select(Instance))}
        finally:
            engine.dispose()

    @property
    def archive(self) -> Path:
        return load_config(self.config_path).storage.archive_path


def make_stow_node(tmp: Path, max_instance_mb: int = 1024) -> StowNode:
    tmp.mkdir(parents=True, exist_ok=True)
    port = free_port()
    path = tmp / "egfr-node.toml"
    path.write_text(f"""
[node]
max_instance_size_mb = {max_instance_mb}
receive_processes = 1
[storage]
data_dir = "{tmp / 'data'}"
free_space_reserve_mb = 0
[web]
port = {port}
stow_enabled = true
""")
    assert cli(path, "db", "upgrade").returncode == 0
    added = cli(path, "web", "add-sender", "pacs")
    assert added.returncode == 0, added.stderr
    node = StowNode(path, port, added.stdout.split()[0])
    node.start()
    return node


@pytest.fixture(scope="module")
def stow_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StowNode]:
    node = make_stow_node(tmp_path_factory.mktemp("stow"), max_instance_mb=256)
    yield node
    node.stop()


def _json_items(answer: requests.Response, tag: str) -> list[dict]:
    return answer.json().get(tag, {}).get("Value", [])


def _uid(item: dict) -> str:
    return item["00081155"]["Value"][0]


def _reason(item: dict, tag: str = "00081197") -> int:
    return item[tag]["Value"][0]


def test_dicomweb_client_stores_300_instances_durably_and_a_resend_is_idempotent(stow_node: StowNode) -> None:
    from dicomweb_client.api import DICOMwebClient

    # as a sender holds them: read from Part-10 files (a STOW-RS part is a Part-10 file, PS3.18 8.7.3)
    images = [dcmread(io.BytesIO(part10(ds))) for ds in mr_series(300, rows=64, columns=64, seed=3)]
    client = DICOMwebClient(stow_node.url, headers={"Authorization": f"Bearer {stow_node.token}"})
    answer = client.store_instances(images)
    assert sorted(str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence) == sorted(
        str(ds.SOPInstanceUID) for ds in images)
    assert "FailedSOPSequence" not in answer
    rows = stow_node.instances()
    for ds in images:
        row = rows[str(ds.SOPInstanceUID)]
        assert hashlib.sha256((stow_node.archive / row.path).read_bytes()).hexdigest() == row.sha256
        assert row.calling_aet == "pacs"
    # sent again: the same 300, stored once (a retrying sender is safe)
    again = client.store_instances(images[:50], study_instance_uid=str(images[0].StudyInstanceUID))
    assert len(again.ReferencedSOPSequence) == 50
    assert len([u for u in stow_node.instances() if u in {str(ds.SOPInstanceUID) for ds in images}]) == 300
    # the same UID with other content: the first copy is kept, a warning, not a failure
    changed = images[0].copy()
    changed.SeriesDescription = "changed"
    answer = stow_node.post(multipart([part10(changed)]))
    assert answer.status_code == 202
    [item] = _json_items(answer, "00081199")
    assert _uid(item) == str(images[0].SOPInstanceUID) and _reason(item, "00081196") == 0xB006
    assert dcmread(stow_node.archive / stow_node.instances()[str(images[0].SOPInstanceUID)].path).SeriesDescription != "changed"


def test_bad_stow_requests_get_the_status_that_says_why_and_keep_nothing(stow_node: StowNode) -> None:
    [good, other] = mr_series(2, seed=11)
    before = set(stow_node.instances())
    data = part10(good)

    assert stow_node.post(multipart([data]), token="not-a-token").status_code == 401
    no_token = requests.post(f"{stow_node.url}/studies", data=multipart([data]), headers={"Content-Type": DICOM_PARTS},
                             timeout=30)
    assert no_token.status_code == 401 and "Bearer" in no_token.headers["WWW-Authenticate"]
    assert stow_node.post(data, content_type="application/dicom").status_code == 415
    assert stow_node.post(multipart([b'{"00100010": {}}']), content_type=DICOM_PARTS.replace(
        '"application/dicom"', '"application/dicom+json"')).status_code == 415
    assert stow_node.post(b"this is not a multipart body at all", ).status_code == 400

    # the body ends inside a part: that part is not stored
    cut = stow_node.post(multipart([data[: len(data) // 2]], close=False))
    assert cut.status_code == 400 and "ended inside a part" in cut.headers.get("Warning", "")
    # a whole part holding a dataset cut short: refused as C-STORE refuses it
    short = stow_node.post(multipart([data[:-100]]))
    assert short.status_code == 409 and _reason(_json_items(short, "00081198")[0]) == 0xC210
    # not DICOM, and an instance of another study than the URL names
    assert _reason(_json_items(stow_node.post(multipart([b"hello"])), "00081198")[0]) == 0xC210
    wrong = stow_node.post(multipart([part10(other)]), study="1.2.3.4")
    assert wrong.status_code == 409 and _reason(_json_items(wrong, "00081198")[0]) == 0xA900

    # a 300 MB part against max_instance_size_mb = 256: refused (0xA700), never kept
    head = part10(good)[:-8]

    def huge() -> Iterator[bytes]:
        yield b"--%s\r\nContent-Type: application/dicom\r\n\r\n" % BOUNDARY.encode()
        yield head
        block = bytes(MB)
        for _ in range(300):
            yield block
        yield b"\r\n--%s--\r\n" % BOUNDARY.encode()

    big = stow_node.post(huge())
    assert big.status_code == 409, big.text[:300]
    [failed] = _json_items(big, "00081198")
    assert _reason(failed) == 0xA700 and _uid(failed) == str(good.SOPInstanceUID)

    assert set(stow_node.instances()) == before
    assert list((stow_node.archive / ".incoming").iterdir()) == []
    config = load_config(stow_node.config_path)
    engine = make_engine(config.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            audits = s.scalars(select(AuditEntry).where(AuditEntry.action == "stow")).all()
    finally:
        engine.dispose()
    assert any("HTTP 409" in a.outcome for a in audits) and all(a.user == "stow:pacs" for a in audits)


def test_orthanc_pushes_a_study_to_the_node_by_stow_rs(tmp_path: Path, stow_node: StowNode, phantom_study) -> None:
    orthanc = Orthanc(tmp_path / "orthanc", dicomweb=True, web_servers={
        "egfr-node": {"Url": stow_node.url + "/", "HttpHeaders": {"Authorization": f"Bearer {stow_node.token}"}}})
    try:
        study = phantom_study("axial2d", "seg")
        files = sorted(study.folder.rglob("*.dcm"))
        for file in files:
            orthanc.upload(file)
        [study_id] = orthanc.get("/studies")
        orthanc.post("/dicom-web/servers/egfr-node/stow", {"Resources": [study_id], "Synchronous": True})
        sent = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
        assert sent <= set(stow_node.instances())
    finally:
        orthanc.stop()


def test_sigkill_during_stow_loses_nothing_reported_stored(tmp_path: Path) -> None:
    node = make_stow_node(tmp_path)
    images = mr_series(300, rows=128, columns=128, seed=5)
    batches = [images[i:i + 10] for i in range(0, len(images), 10)]
    reported: list[str] = []
    killed = threading.Event()

    def sender() -> None:
        for batch in batches:
            try:
                answer = node.post(multipart([part10(ds) for ds in batch]))
            except requests.RequestException:
                return  # the node died under this request: nothing of it was reported
            reported.extend(_uid(item) for item in _json_items(answer, "00081199"))

    thread = threading.Thread(target=sender)
    thread.start()
    wait_for(lambda: len(reported) >= 60, 60, "60 instances reported stored")
    os.kill(node.process.pid, signal.SIGKILL)
    killed.set()
    thread.join(60)
    node.process.wait(10)
    assert node.process.returncode == -signal.SIGKILL
    assert 60 <= len(reported) < len(images)

    rows = node.instances()
    assert set(reported) <= set(rows)
    for row in rows.values():  # every recorded file is whole
        assert hashlib.sha256((node.archive / row.path).read_bytes()).hexdigest() == row.sha256
    # restarted, the sender sends everything again: each instance once
    node.start()
    try:
        for batch in batches:
            assert node.post(multipart([part10(ds) for ds in batch])).status_code == 200
    finally:
        node.stop()
    assert len(node.instances()) == len(images)
    assert len(list(node.archive.rglob("*.dcm"))) == len(images)


def test_stow_outcomes_are_counted_on_the_nodes_metrics_page(tmp_path: Path) -> None:
    """``egfr-node serve`` with the console and monitoring: STOW-RS outcomes reach the SCP's
    /metrics (prometheus_client's multiprocess mode), beside C-STORE's counters."""
    from tests.node.process import start, stop_processes, wait_until_listening, write_config

    port, web_port, metrics_port = free_port(), free_port(), free_port()
    path = write_config(tmp_path, port)
    path.write_text(path.read_text() + f"\n[web]\nenabled = true\nport = {web_port}\nstow_enabled = true\n"
                                       f"[monitoring]\nenabled = true\nport = {metrics_port}\n")
    assert cli(path, "db", "upgrade").returncode == 0
    token = cli(path, "web", "add-sender", "pacs").stdout.split()[0]
    node = start(path, "serve")
    try:
        wait_until_listening(port, node)
        web = StowNode(path, web_port, token)
        wait_for_http(f"http://127.0.0.1:{web_port}/login", 60, "the console of egfr-node serve",
                      alive=lambda: node.poll() is None)
        images = mr_series(2, seed=21)
        assert web.post(multipart([part10(ds) for ds in images])).status_code == 200
        assert web.post(multipart([b"not dicom"])).status_code == 409
        page = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        assert 'egfr_node_stow_instances_total{status="0x0000"} 2.0' in page, page[-3000:]
        assert 'egfr_node_stow_instances_total{status="0xC210"} 1.0' in page
    finally:
        stop_processes([node])

