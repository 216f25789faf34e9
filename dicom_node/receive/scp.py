"""The Storage SCP: C-ECHO and C-STORE for the classes PACS routes to the node.

Nothing acknowledged is lost: the dataset is spooled to the archive's ``.incoming`` as it
arrives (memory does not grow with its size) and fsynced by the DUL thread meanwhile,
walked to its end (``dataset_check``: whole, Pixel Data as long as its attributes say; the
walk keeps the header elements), then linked into the archive (its folder fsynced) and
recorded in the database before the success status goes back. Status codes say what
happened: 0xB006 (warning) stored earlier with other content, first copy kept; 0xA700 out
of space, the instance is over ``node.max_instance_size_mb``, or it is a copy of one in a
study retention is deleting at that moment (send it again later); 0xA701 database
unavailable; 0xA900 dataset does not match the request; 0xC210 undecodable or incomplete
(cut short, Pixel Data of the wrong length, malformed fragments); 0xC220 a required
attribute missing or invalid; 0xC211 anything else (logged with its traceback). The reason
also goes back in the response's Error Comment. The network edge (timeouts, PDU limits,
association slots) is ``dicom_node.receive._pynetdicom``; the listener and its processes
are ``dicom_node.receive.server``.
"""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass, field

from pydicom import uid as dicom_uid
from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config, evt
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import RecordOutcome
from dicom_node.log_safety import OutageLog, RejectionLog, peer_text
from dicom_node.receive._pynetdicom import spooled_dataset
from dicom_node.store.accept import PIXEL_DATA_REQUIRED, STORAGE_SOP_CLASSES, Status, accept_file
from dicom_node.store.archive import Archive

__all__ = [
    "STORAGE_SOP_CLASSES",
    "PIXEL_DATA_REQUIRED",
    "TRANSFER_SYNTAXES",
    "Status",
    "StoreCounters",
    "handle_echo",
    "handle_store",
]

log = logging.getLogger(__name__)

# Privacy and speed: pynetdicom must not log identifiers (C-FIND/MOVE keys carry patient
# names) nor run its per-PDU debug handlers.
pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
pynetdicom_config.LOG_HANDLER_LEVEL = "none"

#: In order of preference: pynetdicom accepts, per proposed context, the first of these the
#: peer offers. Lossless encodings first (a peer offering the JPEG-LS it holds beside
#: uncompressed sends it unconverted, and need not be able to decode it), then uncompressed,
#: lossy last (never ask a peer to compress lossily what it holds losslessly).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    dicom_uid.JPEGLSLossless,
    dicom_uid.JPEG2000Lossless,
    dicom_uid.RLELossless,
    dicom_uid.JPEGLosslessSV1,
    dicom_uid.JPEGLossless,
    dicom_uid.ExplicitVRLittleEndian,
    dicom_uid.ImplicitVRLittleEndian,
    dicom_uid.DeflatedExplicitVRLittleEndian,
    dicom_uid.JPEGLSNearLossless,
    dicom_uid.JPEG2000,
    dicom_uid.JPEGBaseline8Bit,
    dicom_uid.JPEGExtended12Bit,
)


@dataclass
class StoreCounters:
    """Per-process counts of C-STORE outcomes (for logs and tests)."""

    stored: int = 0
    duplicates: int = 0
    conflicts: int = 0
    failures: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)


def _status(code: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: evt.Event) -> int:
    return Status.SUCCESS


def handle_store(
    event: evt.Event,
    archive: Archive,
    sessions: sessionmaker[Session],
    counters: StoreCounters,
    max_instance_bytes: int = 1024 * 2**20,
    refusals: RejectionLog | None = None,
    outage: OutageLog | None = None,
) -> int | Dataset:
    """C-STORE: check the spooled dataset is whole, archive it, record it, then answer
    (never the other way round)."""
    request = event.request
    calling_aet = event.assoc.requestor.ae_title.strip() if event.assoc else ""
    source = str(event.assoc.requestor.address) if event.assoc else ""
    affected = peer_text(str(request.AffectedSOPInstanceUID or ""), 64)
    extra = {"sop_instance_uid": affected}

    def refuse(code: int, reason: str, comment: str) -> Dataset:
        counters.add("failures")
        if refusals is not None:
            refusals.note(source, reason, f"C-STORE {affected} from {calling_aet}: {comment}")
        else:
            log.error("C-STORE %s from %s refused: %s", affected, peer_text(calling_aet, 16), comment, extra=extra)
        return _status(code, comment)

    spooled = spooled_dataset(event)
    if spooled.over_limit:
        return refuse(Status.OUT_OF_RESOURCES, "instance over node.max_instance_size_mb",
                      f"instance over the limit of {max_instance_bytes // 2**20} MiB")
    failed = spooled.write_error
    if failed is not None:
        if failed.errno in (errno.ENOSPC, errno.EDQUOT):
            return refuse(Status.OUT_OF_RESOURCES, "archive out of disk space", "archive out of disk space")
        return refuse(Status.OUT_OF_RESOURCES, "archive cannot be written",
                      f"archive cannot be written ({failed.strerror or type(failed).__name__})")
    # the DUL thread fsyncs the spool while this thread checks it (override 8)
    accepted = accept_file(spooled.path, archive, sessions, max_instance_bytes=max_instance_bytes,
                           claimed_sop_class_uid=str(request.AffectedSOPClassUID or ""),
                           claimed_sop_instance_uid=str(request.AffectedSOPInstanceUID or ""),
                           transfer_syntax_uid=str(event.context.transfer_syntax), calling_aet=calling_aet,
                           sha256=spooled.sha256, synced=spooled.synced, outage=outage)
    if accepted.refusal:
        return refuse(accepted.status, accepted.refusal, accepted.comment)
    if accepted.outcome is None:
        counters.add("failures")
        return _status(accepted.status, accepted.comment)
    counters.add({RecordOutcome.NEW: "stored", RecordOutcome.DUPLICATE: "duplicates",
                  RecordOutcome.CONFLICT: "conflicts"}[accepted.outcome])
    return _status(accepted.status, accepted.comment) if accepted.status else Status.SUCCESS


