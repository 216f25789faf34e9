"""The memoised encodings of the receive path are the libraries' encodings, byte for byte."""

from __future__ import annotations

import random

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta
from pynetdicom.sop_class import ComprehensiveSRStorage, EnhancedMRImageStorage, MRImageStorage, SegmentationStorage

from dicom_node.receive._pynetdicom.encodings import FileMetaValues, encoded_file_meta, encoded_store_response

CLASSES = [MRImageStorage, EnhancedMRImageStorage, SegmentationStorage, ComprehensiveSRStorage]


def _uids(seed: int) -> list[str]:
    """UIDs of every length from 3 to 64 characters, odd and even (the padding differs)."""
    rng = random.Random(seed)
    uids = []
    for length in range(3, 65):
        digits = [rng.choice("123456789.") if 0 < i < length - 3 else rng.choice("123456789") for i in range(length - 2)]
        uids.append("2." + "".join(digits).replace("..", ".1"))
    return uids


def _pydicom_file_meta(sop_class: str, sop_instance: str, syntax: str) -> bytes:
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, create_file_meta(sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance),
                                                  transfer_syntax=UID(syntax)))
    return buffer.getvalue()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                                    JPEG2000Lossless])
def test_the_file_meta_is_what_pydicom_writes(syntax: str) -> None:
    for sop_class in CLASSES:
        for uid in _uids(len(sop_class)):
            assert encoded_file_meta(FileMetaValues(sop_class, uid, syntax)) == _pydicom_file_meta(sop_class, uid, syntax)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize("odd", ["1.2", "1.2.3 ", "1.2.é", "1.2.3\x00"])
def test_an_odd_instance_uid_in_the_file_meta_is_still_what_pydicom_writes(odd: str) -> None:
    assert encoded_file_meta(FileMetaValues(MRImageStorage, odd, ExplicitVRLittleEndian)) == _pydicom_file_meta(
        MRImageStorage, odd, ExplicitVRLittleEndian)


def _pynetdicom_response(message_id: int, sop_class: str, sop_instance: str, status: int) -> bytes:
    """The command PDV pynetdicom sends for this C-STORE-RSP (DIMSEServiceProvider.send_msg)."""
    primitive = C_STORE()
    values = {"MessageIDBeingRespondedTo": message_id, "AffectedSOPClassUID": sop_class,
              "AffectedSOPInstanceUID": sop_instance, "Status": status}
    for keyword, value in values.items():
        setattr(primitive, keyword, value)
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = list(message.encode_msg(1, 16384))
    ((context_id, pdv),) = pdata.presentation_data_value_list
    assert context_id == 1 and pdv[:1] == b"\x03"
    return pdv[1:]


@pytest.mark.parametrize("status", [0x0000, 0xB006, 0xA700, 0xC210])
def test_the_store_response_is_what_pynetdicom_sends(status: int) -> None:
    for sop_class in CLASSES:
        for message_id, uid in zip([0, 1, 2, 255, 256, 65535] * 11, _uids(status)):
            assert encoded_store_response(message_id, sop_class, uid, status) == _pynetdicom_response(
                message_id, sop_class, uid, status)


def test_a_response_a_template_cannot_make_is_left_to_pynetdicom() -> None:
    assert encoded_store_response(65536, MRImageStorage, "1.2.3", 0) is None
    assert encoded_store_response(1, MRImageStorage, "1.2.é", 0) is None
    assert encoded_store_response(1, MRImageStorage, " 1.2.3", 0) is None
    assert encoded_store_response(1, None, "1.2.3", 0) is None
    assert encoded_store_response(1, MRImageStorage, "1.2.3", None) is None
