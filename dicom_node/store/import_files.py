"""Bulk-loading a folder of DICOM files into the archive (``egfr-node import DIR``, and
``egfr-node check --repair`` for a file without its row).

Every file goes through the same checks and intake as a C-STORE (``dicom_node.store.intake``): the
whole-dataset walk (a truncated file is refused, not archived), the same SOP classes, the same
header checks, the same durable write and record, so a second import of the same folder stores
nothing new. The summary counts what was stored, duplicated, conflicting (same UID, other
content: first copy kept) or refused, and lists each refused file with its reason; files that
are not DICOM Part-10 at all (a ``preview.png``, a DICOMDIR's siblings) are counted as skipped
on one line with a few examples. The exit status is 1 when any file was refused (the summary
counts them by reason) or when nothing in the folder was DICOM, 0 otherwise.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session, sessionmaker
from tqdm import tqdm

from dicom_node.store.archive import Archive, ArchiveFull, ArchiveNotWritable
from pipeline.uids import InvalidUID
from dicom_node.store.dataset_check import DatasetTooLarge, IncompleteDataset, check_part10_file
from db.ingest import RecordOutcome
from dicom_node.store.intake import store_instance
from dicom_node.store.header import NonConformant, ReceivedHeader, read_header
from dicom_node.store.accept import PIXEL_DATA_REQUIRED, STORAGE_SOP_CLASSES

__all__ = ["ImportSummary", "import_folder", "import_file"]


@dataclass
class ImportSummary:
    counts: Counter[str] = field(default_factory=Counter)
    refused: list[tuple[str, str]] = field(default_factory=list)
    #: Files without the Part-10 "DICM" marker: not DICOM, counted, not refused one by one.
    skipped: list[str] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)
    #: why the import stopped before the end of the folder (the archive's disk is full or
    #: cannot be written); "" when every file was seen
    stopped: str = ""

    def lines(self, examples: int = 3) -> list[str]:
        c = self.counts
        out = [f"{c['new']} stored, {c['duplicate']} already archived, {c['conflict']} conflicting (first copy kept), "
               f"{len(self.refused)} refused, {len(self.skipped)} skipped (not DICOM Part-10); "
               f"{len(self.studies)} studies"]
        reasons = Counter(reason.split(":")[0] for _, reason in self.refused)
        if reasons:
            out.append("refused by reason: " + "; ".join(f"{n} {why}" for why, n in reasons.most_common()))
        out += [f"  refused {path}: {reason}" for path, reason in self.refused]
        if self.stopped:
            out.append(f"stopped: {self.stopped}")
        if self.skipped:
            more = len(self.skipped) - examples
            out.append(f"  skipped {len(self.skipped)} files that are not DICOM Part-10, for example "
                       + ", ".join(self.skipped[:examples]) + (f" and {more} more" if more > 0 else ""))
        return out


def _is_part10(path: Path) -> bool:
    """The 128-byte preamble followed by "DICM" (PS3.10 7.1)."""
    with open(path, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def _files(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def import_file(path: Path, archive: Archive, sessions: sessionmaker[Session], *, max_instance_bytes: int,
                queue: bool = False, data: bytes | Path | None = None) -> tuple[ReceivedHeader, RecordOutcome]:
    """One Part-10 file through the SCP's checks and intake (``data``: its bytes, or a path
    that stays where it is; default: read ``path``). Raises NonConformant (the reason),
    InvalidDicomError, InvalidUID, OSError."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        raise NonConformant("not a DICOM Part-10 file (no file meta information)")
    header = read_header(ds)
    if header.sop_class_uid not in STORAGE_SOP_CLASSES:
        raise NonConformant(f"SOP class {header.sop_class_uid} is not one the node stores")
    try:  # the SCP's whole-dataset walk, before anything is archived
        check_part10_file(path, max_instance_bytes, pixel_data_required=header.sop_class_uid in PIXEL_DATA_REQUIRED)
    except IncompleteDataset as exc:
        raise NonConformant(f"incomplete dataset: {exc}") from None
    except DatasetTooLarge:
        raise NonConformant(f"instance over node.max_instance_size_mb ({max_instance_bytes // 2**20} MiB)") from None
    outcome = store_instance(archive, sessions, path.read_bytes() if data is None else data, header,
                             str(meta.TransferSyntaxUID), calling_aet="IMPORT", enqueue=queue)
    return header, outcome


def import_folder(folder: Path, archive: Archive, sessions: sessionmaker[Session], *, progress: bool = True,
                  queue: bool = False, max_instance_bytes: int = 1024 * 2**20) -> ImportSummary:
    """Import every DICOM Part-10 file under ``folder``; a DICOM file the SCP would refuse (cut
    short, over ``max_instance_bytes``, a SOP class or header the node does not take) is
    refused with the reason; other files are skipped.

    A retrospective cohort is archived for training: no job is made unless ``queue`` (then
    each study waits to be predicted as if PACS had sent it).
    """
    summary = ImportSummary()
    files = list(_files(Path(folder)))
    for seen, path in enumerate(tqdm(files, desc="import", unit="file", disable=not progress)):
        shown = str(path.relative_to(folder))
        try:
            if not _is_part10(path):
                summary.skipped.append(shown)
                continue
            header, outcome = import_file(path, archive, sessions, max_instance_bytes=max_instance_bytes, queue=queue)
        except (InvalidDicomError, NonConformant, InvalidUID) as exc:
            summary.refused.append((shown, str(exc) or type(exc).__name__))
            continue
        except (ArchiveFull, ArchiveNotWritable) as exc:  # no later file would fare better: stop here
            summary.stopped = (f"the archive cannot take {shown} ({exc.strerror}); {seen} of {len(files)} files "
                               "were seen, nothing of this one was kept. Free space (or fix the folder) and run "
                               "the import again: what is archived counts as already archived")
            break
        except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:
            summary.refused.append((shown, f"cannot be read: {type(exc).__name__}"))
            continue
        summary.counts[outcome.value] += 1
        summary.studies.add(header.study_uid)
    return summary
