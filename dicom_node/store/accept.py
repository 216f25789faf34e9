"""Accepting one instance, whatever door it came by: a whole Part-10 file in the archive's
``.incoming`` folder -> checked, archived, recorded -> the DICOM status that says what
happened.

The SCP's C-STORE handler (its spool file), STOW-RS (one file per part) and a C-GET or
WADO-RS retrieval call :func:`accept_file`, so every door keeps the same promises: the
dataset walked to its end (``dataset_check``: whole, Pixel Data as long as its attributes
say), its header read and checked against what the sender claimed, then archived and
recorded (``intake.store_instance``) before the status is returned; the same duplicate
(idempotent) and conflict (first copy kept, a warning) rules. The status codes are C-STORE's
(PS3.4 B.2.3); STOW-RS reports the same codes as Failure Reason / Warning Reason (PS3.18
10.5.3). A refused instance leaves nothing in the archive; what happens to the file at
``path`` is the caller's (it is linked into place when accepted, never moved).
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info
from pydicom import uid as sop_class  # the storage SOP class UIDs, typed (pynetdicom makes its own at import)
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.engine import DatabaseFileReplaced
from db.ingest import RecordOutcome, SeriesOfAnotherStudy, StudyBeingDeleted
from dicom_node.log_safety import OutageLog, database_outage, peer_text
from dicom_node.store.archive import Archive, ArchiveFull, ArchiveNotWritable
from dicom_node.store.dataset_check import DatasetTooLarge, IncompleteDataset, check_part10_file
from dicom_node.store.header import (
    HEADER_TAGS,
    NonConformant,
    ReceivedHeader,
    SOPClassMismatch,
    header_dataset,
    read_header,
)
from dicom_node.store.intake import store_instance

__all__ = ["Status", "Acceptance", "accept_file", "accept_bytes", "STORAGE_SOP_CLASSES", "PIXEL_DATA_REQUIRED", "first_line"]

log = logging.getLogger(__name__)

#: What the node stores, by any door: the images and masks the pipeline reads, the SRs that
#: may be outlines (or the node's own, sent back), the result card, a PDF report.
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


class Status:
    """The status codes the node answers a stored instance with (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    CONFLICT_FIRST_COPY_KEPT = 0xB006  # warning, elements discarded: the earlier copy is kept
    OUT_OF_RESOURCES = 0xA700  # archive below its free-space reserve or disk full
    DATABASE_UNAVAILABLE = 0xA701  # out of resources: the record could not be committed
    DATASET_DOES_NOT_MATCH = 0xA900  # SOP class/instance differs from the request
    SOP_CLASS_NOT_SUPPORTED = 0x0122  # a class the node does not store (STOW-RS; DIMSE refuses the context)
    CANNOT_UNDERSTAND = 0xC210  # the dataset cannot be decoded
    NON_CONFORMANT = 0xC220  # a required attribute is missing or invalid
    PROCESSING_FAILURE = 0xC211  # anything else, logged with its traceback


@dataclass(frozen=True)
class Acceptance:
    """What became of one instance."""

    status: int
    #: what the sender is told (a C-STORE's Error Comment), empty on success
    comment: str = ""
    #: a refusal's kind, for the per-source refusal log ("" when stored, or when the refusal
    #: was already logged here with the instance's UIDs)
    refusal: str = ""
    header: ReceivedHeader | None = None
    outcome: RecordOutcome | None = None

    @property
    def stored(self) -> bool:
        """Archived and recorded (new or duplicate), or a conflict whose first copy is kept."""
        return self.outcome is not None


def first_line(exc: BaseException) -> str:
    """The error's kind and the first line of what the driver said (no values, no traceback)."""
    orig = getattr(exc, "orig", None) or exc
    text = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
    return f"{type(orig).__name__}: {peer_text(text, 160)}" if text else type(orig).__name__


def accept_file(
    path: Path,
    archive: Archive,
    sessions: sessionmaker[Session],
    *,
    max_instance_bytes: int,
    claimed_sop_class_uid: str = "",
    claimed_sop_instance_uid: str = "",
    transfer_syntax_uid: str = "",
    calling_aet: str = "",
    sha256: str | None = None,
    synced: Future[None] | None = None,
    outage: OutageLog | None = None,
    door: str = "C-STORE",
    study_uid: str = "",
) -> Acceptance:
    """Check the Part-10 file at ``path`` whole, read its header (it must be the SOP class and
    instance the sender claimed, when it claimed one), archive and record it.

    ``transfer_syntax_uid``: the one it was sent in (a DIMSE context); empty = its file
    meta's. ``sha256``/``synced``: as for ``store_instance`` (the SCP's spool). ``door``
    names the way in, in log lines (C-STORE, STOW-RS, C-GET, WADO-RS). ``study_uid``: the
    study the sender addressed (STOW-RS to /studies/{uid}); an instance of another is refused.
    """
    def refuse(code: int, refusal: str, comment: str) -> Acceptance:
        return Acceptance(code, comment, refusal)

    if not claimed_sop_class_uid:  # a file, not a C-STORE request: its file meta is the claim
        try:
            meta = read_file_meta_info(path)
            claimed_sop_class_uid = str(meta.get("MediaStorageSOPClassUID", "") or "")
            claimed_sop_instance_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        except Exception as exc:  # not a Part-10 file
            return refuse(Status.CANNOT_UNDERSTAND, "not a DICOM file", f"not a DICOM Part-10 file: {type(exc).__name__}")
    try:
        summary = check_part10_file(path, max_instance_bytes, keep=HEADER_TAGS,
                                    pixel_data_required=claimed_sop_class_uid in PIXEL_DATA_REQUIRED)
    except DatasetTooLarge:
        return refuse(Status.OUT_OF_RESOURCES, "instance over node.max_instance_size_mb",
                      f"instance over the limit of {max_instance_bytes // 2**20} MiB")
    except IncompleteDataset as exc:
        return refuse(Status.CANNOT_UNDERSTAND, "incomplete dataset", f"incomplete dataset: {exc}")
    try:
        dataset = header_dataset(summary, claimed_sop_class_uid)
        if dataset is None:
            dataset = dcmread(path, stop_before_pixels=True, defer_size=1 << 16)
        header = read_header(dataset, claimed_sop_class_uid or None, claimed_sop_instance_uid or None)
    except SOPClassMismatch as exc:
        return refuse(Status.DATASET_DOES_NOT_MATCH, "dataset does not match the request", str(exc))
    except NonConformant as exc:
        return refuse(Status.NON_CONFORMANT, "dataset non-conformant", str(exc))
    except Exception as exc:  # pydicom raises many kinds on a garbled stream
        # The library's message may quote element values: the type at ERROR, the text at DEBUG.
        log.debug("decode failure detail: %s", peer_text(exc, 200))
        return refuse(Status.CANNOT_UNDERSTAND, "dataset cannot be decoded",
                      f"dataset cannot be decoded: {type(exc).__name__}")
    if study_uid and header.study_uid != study_uid:
        return refuse(Status.DATASET_DOES_NOT_MATCH, "instance of another study than addressed",
                      f"instance of study {header.study_uid}, not of {study_uid}")
    if header.sop_class_uid not in STORAGE_SOP_CLASSES:
        return refuse(Status.SOP_CLASS_NOT_SUPPORTED, "SOP class not stored by the node",
                      f"SOP class {header.sop_class_uid} is not one the node stores")
    extra = {"study_uid": header.study_uid, "sop_instance_uid": header.sop_instance_uid}
    syntax = transfer_syntax_uid or summary.transfer_syntax_uid
    try:
        outcome = store_instance(archive, sessions, path, header, syntax, calling_aet=calling_aet,
                                 sha256=sha256, synced=synced)
        (outage or database_outage).answered()
    except ArchiveFull as exc:
        log.error("%s %s refused: %s", door, header.sop_instance_uid, exc.strerror, extra=extra)
        return Acceptance(Status.OUT_OF_RESOURCES, "archive out of disk space", header=header)
    except StudyBeingDeleted as exc:
        log.warning("%s %s refused: %s", door, header.sop_instance_uid, exc, extra=extra)
        return Acceptance(Status.OUT_OF_RESOURCES, "study being deleted by retention: send it again later", header=header)
    except SeriesOfAnotherStudy as exc:
        log.warning("%s %s refused: %s", door, header.sop_instance_uid, exc, extra=extra)
        return Acceptance(Status.NON_CONFORMANT, "Series Instance UID already used by another study", header=header)
    except ArchiveNotWritable as exc:
        log.error("%s %s refused: %s", door, header.sop_instance_uid, exc.strerror, extra=extra)
        return Acceptance(Status.OUT_OF_RESOURCES, f"archive cannot be written ({os.strerror(exc.errno or 0)})",
                          header=header)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        why = str(orig) if isinstance(orig, DatabaseFileReplaced) else first_line(exc)
        (outage or database_outage).failed(why)  # one line per outage, not one per instance
        return Acceptance(Status.DATABASE_UNAVAILABLE, "database unavailable", header=header)
    except Exception:
        log.exception("%s %s: unexpected failure", door, header.sop_instance_uid, extra=extra)
        return Acceptance(Status.PROCESSING_FAILURE, "processing failure", header=header)
    if outcome is RecordOutcome.CONFLICT:
        # Stored earlier with other content: the first copy stays. A warning, not a failure,
        # so the sender logs it and does not retry in a loop.
        return Acceptance(Status.CONFLICT_FIRST_COPY_KEPT, "stored earlier with other content; first copy kept",
                          header=header, outcome=outcome)
    return Acceptance(Status.SUCCESS, header=header, outcome=outcome)


def accept_bytes(data: bytes, archive: Archive, sessions: sessionmaker[Session], *, max_instance_bytes: int,
                 door: str, calling_aet: str = "", transfer_syntax_uid: str = "") -> Acceptance:
    """:func:`accept_file` for an instance held in memory (a C-GET's C-STORE, a WADO-RS part):
    written to ``.incoming`` first, so it goes through exactly the same checks."""
    path = archive.incoming_file()
    try:
        try:
            with open(path, "xb") as f:
                f.write(data)
        except OSError as exc:
            return Acceptance(Status.OUT_OF_RESOURCES, f"archive cannot be written ({exc.strerror or type(exc).__name__})",
                              "archive cannot be written")
        return accept_file(path, archive, sessions, max_instance_bytes=max_instance_bytes, door=door,
                           calling_aet=calling_aet, transfer_syntax_uid=transfer_syntax_uid)
    finally:
        path.unlink(missing_ok=True)
