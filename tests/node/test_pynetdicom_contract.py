"""Issue 19, item 1 (in part): the SCP runs only on the pynetdicom release its overrides were
written for, says so at start on another one, and the contract names any private name that
moved; an accepted association really runs the node's DUL and association classes."""

from __future__ import annotations

import pynetdicom
import pytest
from pynetdicom import AE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.sop_class import Verification

from dicom_node.pynetdicom_contract import SUPPORTED_VERSION, UnsupportedPynetdicom, check_pynetdicom, contract_problems
from dicom_node.scp import DicomNode
from dicom_node.transport import NodeAssociation, NodeDUL


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
