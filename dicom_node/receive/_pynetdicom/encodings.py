"""The libraries' own encodings of what the receive path encodes for every instance, memoised.

Each C-STORE costs two encodings by pydicom's generic writer: the File Meta Information that
pynetdicom writes at the head of the spooled dataset (``create_file_meta`` and
``write_file_meta_info``), and the C-STORE-RSP command set (pynetdicom encodes it twice,
once for its group length). On the machine this was built on they took 0.25 and 0.35 ms per
instance, an eighth of the node's time at one association (``tests/bench_ingest.py
--stages``). From one instance to the next they differ only in values of known place and
size: the SOP Instance UID (for a given length) and the Message ID. So each is encoded once
by pydicom/pynetdicom per (SOP class, transfer syntax or status, UID length), and an
instance's bytes are that encoding with its own values written at their offsets. Anything
unusual (a UID that is not plain ASCII, optional response elements) is encoded by the
libraries as before. ``tests/node/test_encoding_cache.py`` compares byte for byte.

Override 9 of ``dicom_node.receive._pynetdicom``, a speed-up only, behind
``node.receive_speedups``. Should a template ever not hold its placeholder where the element
says (another pydicom), the libraries' own encoding is used and a warning logged once.
"""

from __future__ import annotations

import functools
import logging
import struct
from typing import Any, NamedTuple

from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom import dimse_messages, evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode
from pynetdicom.pdu_primitives import P_DATA

from dicom_node.receive._pynetdicom.contract import written_for

__all__ = ["FileMetaValues", "encoded_file_meta", "encoded_store_response", "NodeDIMSE", "install", "uninstall"]

written_for(__name__, "3.0.4")

log = logging.getLogger(__name__)

#: Distinct (class, syntax or status, length) keys kept; a peer sending odd classes cannot
#: grow the cache beyond this.
_TEMPLATES = 1024


class FileMetaValues(NamedTuple):
    """What pynetdicom's ``create_file_meta`` is given for a spooled C-STORE dataset."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax: str


def _plain(uid: object) -> bytes | None:
    """The bytes a UID is written as, when a template can take them (ASCII, nothing pydicom
    would strip, a length a placeholder UID can have)."""
    if not isinstance(uid, str) or not 3 <= len(uid) <= 64 or not uid.isascii() or uid != uid.strip():
        return None
    return uid.encode("ascii")


class _TemplateMismatch(Exception):
    """A library encoding that a template cannot be made from."""


_warned: set[str] = set()


def _fall_back(what: str, exc: Exception) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning("%s: %s; the library's own encoding is used", what, exc)


def _placeholder(length: int) -> str:
    """A valid UID of ``length`` characters, to be replaced by the instance's."""
    return "1." + "1" * (length - 2)


def _value_offset(encoded: bytes, head: bytes, value: bytes) -> int:
    found = encoded.find(head)
    if found < 0:
        raise _TemplateMismatch("the encoding does not hold the element where a template expects it")
    offset = found + len(head)
    if encoded[offset:offset + len(value)] != value:
        raise _TemplateMismatch("the encoding does not hold the placeholder where its element says")
    return offset


def _library_file_meta(values: FileMetaValues) -> bytes:
    buffer = DicomBytesIO()
    write_file_meta_info(buffer, create_file_meta(sop_class_uid=UID(values.sop_class_uid),
                                                  sop_instance_uid=UID(values.sop_instance_uid),
                                                  transfer_syntax=UID(values.transfer_syntax)))
    return buffer.getvalue()


@functools.lru_cache(maxsize=_TEMPLATES)
def _file_meta_template(sop_class_uid: str, transfer_syntax: str, length: int) -> tuple[bytes, int]:
    placeholder = _placeholder(length)
    encoded = _library_file_meta(FileMetaValues(sop_class_uid, placeholder, transfer_syntax))
    # (0002,0003) Media Storage SOP Instance UID, explicit VR little endian
    head = b"\x02\x00\x03\x00UI" + struct.pack("<H", length + length % 2)
    return encoded, _value_offset(encoded, head, placeholder.encode("ascii"))


def encoded_file_meta(values: FileMetaValues) -> bytes:
    """The File Meta Information (group 0002) pynetdicom writes for a spooled dataset."""
    uid = _plain(values.sop_instance_uid)
    if uid is None or not isinstance(values.sop_class_uid, str) or not isinstance(values.transfer_syntax, str):
        return _library_file_meta(values)
    try:
        template, offset = _file_meta_template(str(values.sop_class_uid), str(values.transfer_syntax), len(uid))
    except _TemplateMismatch as exc:
        _fall_back("file meta template", exc)
        return _library_file_meta(values)
    return template[:offset] + uid + template[offset + len(uid):]


def _library_store_response(message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Status = status
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    encoded: bytes | None = encode(message.command_set, True, True)  # as DIMSEMessage.encode_msg does
    if encoded is None:
        raise _TemplateMismatch("pynetdicom could not encode the C-STORE-RSP command set")
    return encoded


@functools.lru_cache(maxsize=_TEMPLATES)
def _store_response_template(sop_class_uid: str, status: int, length: int) -> tuple[bytes, int, int]:
    placeholder = _placeholder(length)
    encoded = _library_store_response(1, sop_class_uid, placeholder, status)
    # implicit VR little endian: (0000,0120) Message ID Being Responded To, (0000,1000) Affected SOP Instance UID
    id_offset = _value_offset(encoded, b"\x00\x00\x20\x01\x02\x00\x00\x00", b"\x01\x00")
    uid_offset = _value_offset(encoded, b"\x00\x00\x00\x10" + struct.pack("<L", length + length % 2),
                               placeholder.encode("ascii"))
    return encoded, id_offset, uid_offset


def encoded_store_response(message_id: object, sop_class_uid: object, sop_instance_uid: object,
                           status: object) -> bytes | None:
    """The C-STORE-RSP command set (implicit VR little endian) pynetdicom would send for a
    response with only these values; None when a template cannot make it."""
    uid = _plain(sop_instance_uid)
    if uid is None or _plain(sop_class_uid) is None:
        return None
    if not isinstance(message_id, int) or not isinstance(status, int) or not (0 <= message_id <= 0xFFFF and 0 <= status <= 0xFFFF):
        return None
    try:
        template, id_offset, uid_offset = _store_response_template(str(sop_class_uid), status, len(uid))
    except _TemplateMismatch as exc:
        _fall_back("C-STORE-RSP template", exc)
        return None
    return b"".join((template[:id_offset], struct.pack("<H", message_id), template[id_offset + 2:uid_offset], uid,
                     template[uid_offset + len(uid):]))


_LIBRARY_FILE_META = (dimse_messages.create_file_meta, dimse_messages.write_file_meta_info)


def _write_file_meta(fp: Any, file_meta: Any, *args: Any, **kwargs: Any) -> None:
    """``write_file_meta_info`` in ``pynetdicom.dimse_messages``: the memoised encoding of
    the values ``create_file_meta`` was given."""
    if isinstance(file_meta, FileMetaValues):
        fp.write(encoded_file_meta(file_meta))
    else:
        _LIBRARY_FILE_META[1](fp, file_meta, *args, **kwargs)


class NodeDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider; a plain C-STORE-RSP is sent from its memoised encoding while the encodings are installed."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if (
            active()
            and type(primitive) is C_STORE
            and primitive.MessageIDBeingRespondedTo is not None
            and primitive.ErrorComment is None
            and primitive.OffendingElement is None
            and not self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
        ):
            command = encoded_store_response(primitive.MessageIDBeingRespondedTo, primitive.AffectedSOPClassUID,
                                             primitive.AffectedSOPInstanceUID, primitive.Status)
            if command is not None and (not self.maximum_pdu_size or len(command) + 6 <= self.maximum_pdu_size):
                pdata = P_DATA()
                pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # last command fragment
                self.dul.send_pdu(pdata)
                return
        super().send_msg(primitive, context_id)


def install() -> None:
    """The spool's File Meta Information and plain C-STORE-RSPs from memoised encodings."""
    dimse_messages.create_file_meta = FileMetaValues  # called with the three values by keyword
    dimse_messages.write_file_meta_info = _write_file_meta


def uninstall() -> None:
    """pydicom's and pynetdicom's own encoders again (``node.receive_speedups = false``)."""
    dimse_messages.create_file_meta, dimse_messages.write_file_meta_info = _LIBRARY_FILE_META


def active() -> bool:
    return dimse_messages.write_file_meta_info is _write_file_meta
