"""docs/conformance.md says what the SCP does: its SOP classes and transfer syntaxes are
exactly those the SCP accepts (read from the AE and negotiated over loopback), and every
configuration key it names exists."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_node import config as config_module
from dicom_node.receive.server import DicomNode

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
EXPLICIT_BIG_ENDIAN = "1.2.840.10008.1.2.2"


def doc_table(marker: str) -> list[str]:
    text = DOC.read_text(encoding="utf-8")
    block = text.split(f"<!-- {marker} -->")[1].split(f"<!-- /{marker} -->")[0]
    return re.findall(r"^\|[^|]+\|\s*([0-9.]+)\s*\|$", block, re.M)


def test_listed_sop_classes_and_transfer_syntaxes_are_what_the_ae_supports(node: DicomNode) -> None:
    sop_classes, syntaxes = doc_table("accepted-sop-classes"), doc_table("accepted-transfer-syntaxes")
    supported = {str(cx.abstract_syntax): [str(ts) for ts in cx.transfer_syntax] for cx in node.ae.supported_contexts}
    assert sorted(supported) == sorted(sop_classes)
    for sop_class, offered in supported.items():
        if sop_class != Verification:
            assert offered == syntaxes, sop_class  # same syntaxes, same order of preference


def test_every_listed_pair_is_accepted_and_nothing_else(node: DicomNode) -> None:
    sop_classes = [uid for uid in doc_table("accepted-sop-classes") if uid != Verification]
    pairs = [(c, ts) for c in sop_classes for ts in doc_table("accepted-transfer-syntaxes")]
    pairs += [(CTImageStorage, "1.2.840.10008.1.2.1"), (sop_classes[0], EXPLICIT_BIG_ENDIAN)]
    accepted: set[tuple[str, str]] = set()
    for start in range(0, len(pairs), 120):  # at most 128 contexts per association
        ae = AE(ae_title="CONFORMANCE")
        for sop_class, syntax in pairs[start:start + 120]:
            ae.add_requested_context(sop_class, [syntax])
        assoc = ae.associate("127.0.0.1", node.port, ae_title="EGFR_NODE")
        assert assoc.is_established
        accepted |= {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        assoc.release()
    assert accepted == set(pairs[:-2])


def test_configuration_keys_named_exist() -> None:
    known = {f"{name}.{f.name}" for name, cls in config_module._SECTIONS.items() for f in fields(cls)}
    named = set(re.findall(r"`((?:node|tls|storage|worker|delivery|report|database|logging)\.[a-z_]+)`",
                           DOC.read_text(encoding="utf-8")))
    assert named and named <= known, sorted(named - known)
