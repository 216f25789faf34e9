"""The one way into the archive: an encoded instance + its parsed header -> file and record.

The SCP's C-STORE handler (its spooled file), ``egfr-node import`` and the node's own results
(the SR, the SEG it derives, the result card; bytes in memory) all call
:func:`store_instance`, so every instance gets the same checks, the same durable write
(``Archive.store`` / ``Archive.store_file``: fsynced, linked into place, never replacing a
file) and the same record (``db.ingest.record_instance``, committed before this returns).
A file is hashed in chunks and linked, never read whole. No pynetdicom event here.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from sqlalchemy.orm import Session, sessionmaker

from db.ingest import InstanceRecord, RecordOutcome, record_instance
from dicom_node.store.archive import Archive
from pipeline.uids import sha256_of
from dicom_node.store.header import ReceivedHeader

__all__ = ["store_instance", "store_result", "record_of", "encode_part10"]

log = logging.getLogger(__name__)


def record_of(header: ReceivedHeader, relative_path: str, transfer_syntax_uid: str, size_bytes: int,
              calling_aet: str = "", origin: str = "received", enqueue: bool = True) -> InstanceRecord:
    """The database record of an instance with this header stored at ``relative_path``."""
    return InstanceRecord(
        study_uid=header.study_uid,
        series_uid=header.series_uid,
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        transfer_syntax_uid=transfer_syntax_uid,
        path=relative_path,
        size_bytes=size_bytes,
        sha256="",
        modality=header.modality,
        series_number=header.series_number,
        series_description=header.series_description,
        frame_of_reference_uid=header.frame_of_reference_uid,
        calling_aet=calling_aet,
        referenced_series_uids=header.referenced_series_uids,
        referenced_sop_uids=header.referenced_sop_uids,
        mask_kind=header.mask_kind,
        origin=origin,
        enqueue=enqueue,
    )


def store_instance(
    archive: Archive,
    sessions: sessionmaker[Session],
    encoded: bytes | Path,
    header: ReceivedHeader,
    transfer_syntax_uid: str,
    *,
    calling_aet: str = "",
    origin: str = "received",
    enqueue: bool = True,
    sha256: str | None = None,
    synced: Future[None] | None = None,
) -> RecordOutcome:
    """Archive ``encoded`` (a Part-10 file: preamble, file meta, dataset; its bytes, or the
    path of a file written whole, which stays where it is) and record it.

    Returns NEW, DUPLICATE (same UID, same bytes: idempotent) or CONFLICT (same UID, other
    bytes: the first copy is kept). ``enqueue=False`` (a retrospective import) archives and
    records without making a job. ``sha256``: the file's hash when its writer computed it
    (the SCP's spool), so it is not read again. ``synced``: the fsync of that file its writer
    is running (the SCP's DUL thread), waited for before the file is linked. Raises
    ``ArchiveFull`` (no space), ``ArchiveNotWritable``, ``InvalidUID`` and
    SQLAlchemy errors (database unavailable: the file this call wrote is removed again);
    nothing is acknowledged by then.
    """
    relative = archive.relative_path(header.study_uid, header.series_uid, header.sop_instance_uid)
    if isinstance(encoded, Path):
        size = encoded.stat().st_size
        stored = archive.store_file(relative, encoded, sha256=sha256, synced=synced)
    else:
        size = len(encoded)
        stored = archive.store(relative, encoded, results=origin == "node")
    record = record_of(header, relative, transfer_syntax_uid, size, calling_aet, origin, enqueue)
    if stored.written:
        try:
            outcome = record_instance(sessions, replace(record, sha256=stored.sha256))
        except BaseException:
            archive.withdraw(relative)  # the sender is refused: nothing of this send stays archived
            raise
    elif stored.identical:
        outcome = record_instance(sessions, replace(record, sha256=stored.sha256))
    else:
        # A file with other bytes is there: the recorded first copy (a conflict), or a
        # complete file from an earlier send never recorded (a crash before the commit):
        # either way it is the first copy; it is recorded, and this send counted against it.
        record_instance(sessions, _record_of_file(archive.path(relative), record))
        outcome = record_instance(sessions, replace(record, sha256=stored.sha256))
    log.debug("%s %s: %s", origin, header.sop_instance_uid, outcome.value,
              extra={"study_uid": header.study_uid, "sop_instance_uid": header.sop_instance_uid})
    return outcome


def encode_part10(ds: Dataset) -> bytes:
    """``ds`` as a Part-10 file (preamble, file meta, dataset), the bytes that are archived and sent."""
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def store_result(archive: Archive, sessions: sessionmaker[Session], ds: Dataset) -> str:
    """The node's own result (its SR, the SEG it derives, the result card) archived and
    recorded as ``origin="node"`` (it never moves the queue), described by the UIDs its builder
    set: nothing to check or re-derive, as a received header is. Its SOP Instance UID."""
    series_number = ds.get("SeriesNumber")
    frame = ds.get("FrameOfReferenceUID")
    header = ReceivedHeader(
        study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID), sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID), modality=str(ds.get("Modality", "") or ""),
        series_number=int(series_number) if series_number not in (None, "") else None,
        series_description=str(ds.get("SeriesDescription", "") or "")[:64],
        frame_of_reference_uid=str(frame) if frame else None, referenced_series_uids=(), referenced_sop_uids=())
    store_instance(archive, sessions, encode_part10(ds), header, str(ds.file_meta.TransferSyntaxUID), origin="node")
    return header.sop_instance_uid


def _record_of_file(path: Path, record: InstanceRecord) -> InstanceRecord:
    """``record`` as it describes the file already at ``path`` (its bytes and file meta)."""
    meta = read_file_meta_info(path)
    return replace(
        record,
        sha256=sha256_of(path),
        size_bytes=path.stat().st_size,
        transfer_syntax_uid=str(meta.get("TransferSyntaxUID", record.transfer_syntax_uid)),
        sop_class_uid=str(meta.get("MediaStorageSOPClassUID", record.sop_class_uid)),
    )
