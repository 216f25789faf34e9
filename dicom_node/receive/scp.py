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
import os
import threading
from dataclasses import dataclass, field

from pydicom import dcmread, uid as dicom_uid
from pydicom.dataset import Dataset
from pynetdicom import _config as pynetdicom_config, evt, sop_class
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.engine import DatabaseFileReplaced
from db.ingest import RecordOutcome, StudyBeingDeleted
from dicom_node.receive._pynetdicom import SpooledDataset, spooled_dataset
from dicom_node.receive.archive import Archive, ArchiveFull, ArchiveNotWritable
from dicom_node.receive.dataset_check import DatasetTooLarge, IncompleteDataset, check_part10_file
from dicom_node.receive.intake import store_instance
from dicom_node.receive.log_safety import OutageLog, RejectionLog, database_outage, peer_text
from dicom_node.receive.header import (
    HEADER_TAGS,
    NonConformant,
    ReceivedHeader,
    SOPClassMismatch,
    header_dataset,
    read_header,
)

__all__ = [
    "STORAGE_SOP_CLASSES",
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

STORAGE_SOP_CLASSES: tuple[str, ...] = (
    sop_class.MRImageStorage,
    sop_class.EnhancedMRImageStorage,
    sop_class.LegacyConvertedEnhancedMRImageStorage,
    sop_class.SegmentationStorage,
    sop_class.RTStructureSetStorage,
    sop_class.BasicTextSRStorage,
    sop_class.EnhancedSRStorage,
    sop_class.ComprehensiveSRStorage,
    sop_class.Comprehensive3DSRStorage,
    sop_class.ExtensibleSRStorage,
    sop_class.SecondaryCaptureImageStorage,
    sop_class.EncapsulatedPDFStorage,
)

#: Storage classes whose IODs require Pixel Data (Type 1): an instance without it is
#: incomplete (0xC210). RTSTRUCT, SR and PDF carry none.
PIXEL_DATA_REQUIRED: frozenset[str] = frozenset({
    sop_class.MRImageStorage,
    sop_class.EnhancedMRImageStorage,
    sop_class.LegacyConvertedEnhancedMRImageStorage,
    sop_class.SecondaryCaptureImageStorage,
    sop_class.SegmentationStorage,
})

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


class Status:
    """C-STORE / C-ECHO status codes the node answers with (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    CONFLICT_FIRST_COPY_KEPT = 0xB006  # warning, elements discarded: the earlier copy is kept
    OUT_OF_RESOURCES = 0xA700  # archive below its free-space reserve or disk full
    DATABASE_UNAVAILABLE = 0xA701  # out of resources: the record could not be committed
    DATASET_DOES_NOT_MATCH = 0xA900  # SOP class/instance differs from the request
    CANNOT_UNDERSTAND = 0xC210  # the dataset cannot be decoded
    NON_CONFORMANT = 0xC220  # a required attribute is missing or invalid
    PROCESSING_FAILURE = 0xC211  # anything else, logged with its traceback


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
    path = spooled.path
    if spooled.over_limit:
        return refuse(Status.OUT_OF_RESOURCES, "instance over node.max_instance_size_mb",
                      f"instance over the limit of {max_instance_bytes // 2**20} MiB")
    failed = spooled.write_error
    if failed is not None:
        if failed.errno in (errno.ENOSPC, errno.EDQUOT):
            return refuse(Status.OUT_OF_RESOURCES, "archive out of disk space", "archive out of disk space")
        return refuse(Status.OUT_OF_RESOURCES, "archive cannot be written",
                      f"archive cannot be written ({failed.strerror or type(failed).__name__})")
    sop_class_uid = str(request.AffectedSOPClassUID or "")
    try:
        summary = check_part10_file(path, max_instance_bytes, pixel_data_required=sop_class_uid in PIXEL_DATA_REQUIRED,
                                    keep=HEADER_TAGS)
    except DatasetTooLarge:
        return refuse(Status.OUT_OF_RESOURCES, "instance over node.max_instance_size_mb",
                      f"instance over the limit of {max_instance_bytes // 2**20} MiB")
    except IncompleteDataset as exc:
        return refuse(Status.CANNOT_UNDERSTAND, "incomplete dataset", f"incomplete dataset: {exc}")
    try:
        dataset = header_dataset(summary, sop_class_uid)
        if dataset is None:
            dataset = dcmread(path, stop_before_pixels=True, defer_size=1 << 16)
        header = read_header(dataset, sop_class_uid, str(request.AffectedSOPInstanceUID or ""))
    except SOPClassMismatch as exc:
        return refuse(Status.DATASET_DOES_NOT_MATCH, "dataset does not match the request", str(exc))
    except NonConformant as exc:
        return refuse(Status.NON_CONFORMANT, "dataset non-conformant", str(exc))
    except Exception as exc:  # pydicom raises many kinds on a garbled stream
        # The library's message may quote element values: the type at ERROR, the text at DEBUG.
        log.debug("decode failure detail: %s", peer_text(exc, 200))
        return refuse(Status.CANNOT_UNDERSTAND, "dataset cannot be decoded",
                      f"dataset cannot be decoded: {type(exc).__name__}")
    extra = {"study_uid": header.study_uid, "sop_instance_uid": header.sop_instance_uid}
    try:
        answer = _archive_and_record(event, spooled, header, calling_aet, archive, sessions, counters)
        (outage or database_outage).answered()
        return answer
    except ArchiveFull as exc:
        counters.add("failures")
        log.error("C-STORE %s refused: %s", header.sop_instance_uid, exc.strerror, extra=extra)
        return _status(Status.OUT_OF_RESOURCES, "archive out of disk space")
    except StudyBeingDeleted as exc:
        counters.add("failures")
        log.warning("C-STORE %s refused: %s", header.sop_instance_uid, exc, extra=extra)
        return _status(Status.OUT_OF_RESOURCES, "study being deleted by retention: send it again later")
    except ArchiveNotWritable as exc:
        counters.add("failures")
        log.error("C-STORE %s refused: %s", header.sop_instance_uid, exc.strerror, extra=extra)
        return _status(Status.OUT_OF_RESOURCES, f"archive cannot be written ({os.strerror(exc.errno or 0)})")
    except SQLAlchemyError as exc:
        counters.add("failures")
        why = str(exc.orig) if isinstance(getattr(exc, "orig", None), DatabaseFileReplaced) else _first_line(exc)
        (outage or database_outage).failed(why)  # one line per outage, not one per instance
        return _status(Status.DATABASE_UNAVAILABLE, "database unavailable")
    except Exception:
        counters.add("failures")
        log.exception("C-STORE %s: unexpected failure", header.sop_instance_uid, extra=extra)
        return _status(Status.PROCESSING_FAILURE, "processing failure")


def _first_line(exc: BaseException) -> str:
    """The error's kind and the first line of what the driver said (no values, no traceback)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {peer_text(text, 160)}" if text else type(orig).__name__


def _archive_and_record(
    event: evt.Event,
    spooled: SpooledDataset,
    header: ReceivedHeader,
    calling_aet: str,
    archive: Archive,
    sessions: sessionmaker[Session],
    counters: StoreCounters,
) -> int | Dataset:
    # the DUL thread fsyncs the spool while this thread checks it (override 8)
    outcome = store_instance(archive, sessions, spooled.path, header, str(event.context.transfer_syntax),
                             calling_aet=calling_aet, sha256=spooled.sha256, synced=spooled.synced)
    counters.add({RecordOutcome.NEW: "stored", RecordOutcome.DUPLICATE: "duplicates", RecordOutcome.CONFLICT: "conflicts"}[outcome])
    if outcome is RecordOutcome.CONFLICT:
        # Stored earlier with other content: the first copy stays. A warning, not a failure,
        # so the sender logs it and does not retry in a loop.
        return _status(Status.CONFLICT_FIRST_COPY_KEPT, "stored earlier with other content; first copy kept")
    return Status.SUCCESS


