"""DCMTK as the peer PACS would be: echoscu and storescu, plain and over TLS."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless
from sqlalchemy import select

from db.models import Instance
from dicom_node.receive.server import DicomNode
from tests.conftest import require_tool
from tests.dicom_factory import mask_for, mr_series, write_all
from tests.node.tls_certs import make_tls_files

ENV = {**os.environ, "TCP_NODELAY": "1"}


def dcmtk(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    require_tool(args[0])
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)


def stored_uids(runtime) -> set[str]:
    with runtime.sessions.begin() as s:
        return set(s.scalars(select(Instance.sop_instance_uid)))


def test_echoscu(node: DicomNode) -> None:
    done = dcmtk("echoscu", "-aec", "EGFR_NODE", "127.0.0.1", str(node.port))
    assert done.returncode == 0, done.stderr


def test_storescu_study_with_mask(node: DicomNode, runtime, tmp_path: Path) -> None:
    images = mr_series(5)
    files = write_all([*images, mask_for(images, "RTSTRUCT")], tmp_path / "study")
    done = dcmtk("storescu", "-aec", "EGFR_NODE", "127.0.0.1", str(node.port), *map(str, files))
    assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr
    assert stored_uids(runtime) == {dcmread(f).SOPInstanceUID for f in files}


@pytest.mark.parametrize(("syntax", "propose"), [(JPEGLSLossless, "-xt"), (JPEG2000Lossless, "-xv")])
def test_storescu_compressed_series_is_archived_as_sent(
    node: DicomNode, runtime, tmp_path: Path, syntax: str, propose: str
) -> None:
    images = mr_series(3)
    for ds in images:
        ds.compress(syntax)
    files = write_all(images, tmp_path / "study")
    # storescu proposes the compressed syntax only when told (-xt JPEG-LS, -xv JPEG 2000)
    done = dcmtk("storescu", propose, "-aec", "EGFR_NODE", "127.0.0.1", str(node.port), *map(str, files))
    assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr
    with runtime.sessions.begin() as s:
        rows = s.scalars(select(Instance)).all()
        assert {r.transfer_syntax_uid for r in rows} == {syntax}
        for row, sent in zip(sorted(rows, key=lambda r: r.sop_instance_uid), sorted(files, key=lambda f: f.stem)):
            archived = dcmread(runtime.archive.path(row.path))
            assert archived.PixelData == dcmread(sent).PixelData  # the encoded bytes, not re-encoded
            assert archived.pixel_array.shape == (64, 64)


def test_storescu_duplicate_send(node: DicomNode, runtime, tmp_path: Path) -> None:
    files = write_all(mr_series(3), tmp_path / "s")
    for _ in range(2):
        done = dcmtk("storescu", "-aec", "EGFR_NODE", "127.0.0.1", str(node.port), *map(str, files))
        assert done.returncode == 0 and "Failed" not in done.stderr, done.stderr
    assert len(stored_uids(runtime)) == 3
    assert len([p for p in runtime.archive.root.rglob("*.dcm")]) == 3


def test_storescu_unknown_calling_ae_is_rejected(config, runtime, tmp_path: Path) -> None:
    cfg = replace(config, node=replace(config.node, allowed_calling_aets=("PACS",)))
    node = DicomNode(cfg, runtime.archive, runtime.sessions)
    node.start()
    try:
        files = write_all(mr_series(1), tmp_path / "s")
        done = dcmtk("storescu", "-aet", "INTRUDER", "-aec", "EGFR_NODE", "127.0.0.1", str(node.port), *map(str, files))
        assert done.returncode != 0
        assert "Association Rejected" in done.stderr
        assert stored_uids(runtime) == set()
        done = dcmtk("storescu", "-aet", "PACS", "-aec", "EGFR_NODE", "127.0.0.1", str(node.port), *map(str, files))
        assert done.returncode == 0, done.stderr
    finally:
        node.stop()


@pytest.fixture
def tls_node(config, runtime, tmp_path: Path):
    certs = make_tls_files(tmp_path / "certs")
    cfg = replace(
        config,
        tls=replace(config.tls, enabled=True, port=0, certificate=str(certs.server_cert),
                    private_key=str(certs.server_key), ca_certificates=str(certs.ca_cert)),
    )
    node = DicomNode(cfg, runtime.archive, runtime.sessions)
    node.start()
    yield node, certs
    node.stop()


def test_storescu_over_tls_with_mutual_authentication(tls_node, runtime, tmp_path: Path) -> None:
    node, certs = tls_node
    files = write_all(mr_series(2), tmp_path / "s")
    done = dcmtk(
        "storescu", "+tls", str(certs.client_key), str(certs.client_cert), "+cf", str(certs.ca_cert),
        "-aet", "PACS", "-aec", "EGFR_NODE", "127.0.0.1", str(node.tls_port), *map(str, files),
    )
    assert done.returncode == 0, done.stderr
    assert len(stored_uids(runtime)) == 2


def test_tls_port_refuses_a_client_certificate_from_an_unknown_ca(tls_node, runtime, tmp_path: Path) -> None:
    node, certs = tls_node
    files = write_all(mr_series(1), tmp_path / "s")
    done = dcmtk(
        "storescu", "+tls", str(certs.stranger_key), str(certs.stranger_cert), "+cf", str(certs.ca_cert),
        "-aec", "EGFR_NODE", "127.0.0.1", str(node.tls_port), *map(str, files),
    )
    assert done.returncode != 0
    assert stored_uids(runtime) == set()
    # the plain port keeps working beside it
    done = dcmtk("echoscu", "-aec", "EGFR_NODE", "127.0.0.1", str(node.port))
    assert done.returncode == 0, done.stderr
