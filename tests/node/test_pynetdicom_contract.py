"""Issue 19, item 1 (in part): the SCP runs only on the pynetdicom release its overrides were
written for, says so at start on another one, and the contract names any private name that
moved; an accepted association really runs the node's DUL and association classes."""

from __future__ import annotations

from pathlib import Path

import pynetdicom
import pytest
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification

from pydicom import dcmread
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pynetdicom.dsutils import create_file_meta

from db.migrate import upgrade
from dicom_node.store import open as node_store
from dicom_node.receive import _pynetdicom
from dicom_node.receive._pynetdicom import contract, encodings, reactor
from dicom_node.receive._pynetdicom.association import NodeAssociation
from dicom_node.receive._pynetdicom.contract import SUPPORTED_VERSION, UnsupportedPynetdicom, check_pynetdicom, contract_problems
from dicom_node.receive._pynetdicom.dul import NodeDUL
from dicom_node.receive.scp import Status
from dicom_node.receive.server import DicomNode
from tests.conftest import make_config
from tests.dicom_factory import mr_series
from tests.node.scu import store


def test_the_installed_pynetdicom_is_the_supported_one_with_every_private_name() -> None:
    assert pynetdicom.__version__ == SUPPORTED_VERSION
    assert contract_problems() == []
    check_pynetdicom()


def test_another_release_stops_the_node_at_start_naming_the_supported_one(config, runtime, monkeypatch) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")  # as if pip had installed another release
    node = DicomNode(config, runtime.archive, runtime.sessions)
    with pytest.raises(UnsupportedPynetdicom, match=r"pynetdicom 3\.1\.0 is installed.*pynetdicom==3\.0\.4"):
        node.start()
    assert node.servers == []  # nothing listens


def test_a_private_name_that_moved_is_named(monkeypatch) -> None:
    monkeypatch.delattr(DULServiceProvider, "_read_pdu_data")
    monkeypatch.setattr(DULServiceProvider, "_decode_pdu", lambda self, data, extra: None)
    problems = contract_problems()
    assert "pynetdicom.dul.DULServiceProvider._read_pdu_data is gone" in problems
    assert any(p.startswith("pynetdicom.dul.DULServiceProvider._decode_pdu(") and "no longer takes (self, bytestream)" in p
               for p in problems), problems
    with pytest.raises(UnsupportedPynetdicom, match="_read_pdu_data is gone"):
        check_pynetdicom()


def test_an_accepted_association_runs_the_nodes_dul_and_association(node) -> None:
    ae = AE(ae_title="PACS")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="EGFR_NODE")
    try:
        assert assoc.is_established
        (server_side,) = [a for server in node.servers for a in server.active_associations]
        assert type(server_side) is NodeAssociation and type(server_side.dul) is NodeDUL
        assert assoc.send_c_echo().Status == 0
    finally:
        assoc.release()


def test_an_override_module_written_for_another_release_is_named(config, runtime, monkeypatch) -> None:
    monkeypatch.setitem(contract._WRITTEN_FOR, "dicom_node.receive._pynetdicom.dul", "3.0.3")
    node = DicomNode(config, runtime.archive, runtime.sessions)
    with pytest.raises(UnsupportedPynetdicom, match=r"written for another release: dicom_node\.receive\._pynetdicom\.dul"):
        node.start()
    assert node.servers == []


def test_every_override_module_declares_its_release() -> None:
    assert set(contract._WRITTEN_FOR) >= {f"dicom_node.receive._pynetdicom.{name}"
                                          for name in ("association", "dul", "encodings", "reactor", "spool")}


def _archived(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "archive").rglob("*.dcm"))


def test_with_the_speedups_off_the_node_stores_through_pynetdicoms_own_code(tmp_path) -> None:
    config = make_config(tmp_path / "data", receive_speedups=False)
    upgrade(config.database_url)
    runtime = node_store.open_runtime(config)
    node = DicomNode(config, runtime.archive, runtime.sessions)
    try:
        node.start()
        assert not reactor.active() and not encodings.active()  # pynetdicom's own time and encoders
        assert store(node.port, mr_series(3)) == [Status.SUCCESS] * 3
        assert len(_archived(tmp_path / "data")) == 3
    finally:
        node.stop()
        runtime.close()
        _pynetdicom.install(speedups=True)  # as every other node of this test process has it


def test_an_encoding_a_template_cannot_make_falls_back_to_the_library_and_logs(node, config, monkeypatch, caplog) -> None:
    def no_template(*args: object) -> int:
        raise encodings._TemplateMismatch("the encoding does not hold the element where a template expects it")

    encodings._file_meta_template.cache_clear()
    encodings._store_response_template.cache_clear()
    monkeypatch.setattr(encodings, "_value_offset", no_template)  # as another pydicom's encoding might
    monkeypatch.setattr(encodings, "_warned", set())
    assert encodings.active()
    images = mr_series(2)
    with caplog.at_level("WARNING", logger=encodings.__name__):
        assert store(node.port, images) == [Status.SUCCESS] * 2
    warnings = sorted(r.getMessage() for r in caplog.records if r.name == encodings.__name__)
    assert warnings == ["C-STORE-RSP template: the encoding does not hold the element where a template expects it; "
                        "the library's own encoding is used",
                        "file meta template: the encoding does not hold the element where a template expects it; "
                        "the library's own encoding is used"]  # once each, not once an instance
    for path in _archived(config.storage.data_path):
        stored = dcmread(path)
        library = DicomBytesIO()
        write_file_meta_info(library, create_file_meta(sop_class_uid=stored.SOPClassUID,
                                                       sop_instance_uid=stored.SOPInstanceUID,
                                                       transfer_syntax=stored.file_meta.TransferSyntaxUID))
        assert path.read_bytes()[128 + 4:128 + 4 + len(library.getvalue())] == library.getvalue()
