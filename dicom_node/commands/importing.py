"""``egfr-node import DIR``: bulk-load a folder of DICOM files into the archive.

Every file goes through the same intake as a C-STORE (``dicom_node.intake``): the same SOP
classes accepted, the same header checks, the same durable write and record, so a second
import of the same folder stores nothing new. The summary counts what was stored,
duplicated, conflicting (same UID, other content: first copy kept) or refused, and lists
each refused file with its reason.
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

from dicom_node.archive import Archive, InvalidUID
from dicom_node.intake import store_instance
from dicom_node.received_header import NonConformant, read_header
from dicom_node.scp import STORAGE_SOP_CLASSES

__all__ = ["ImportSummary", "import_folder"]


@dataclass
class ImportSummary:
    counts: Counter = field(default_factory=Counter)
    refused: list[tuple[str, str]] = field(default_factory=list)
    studies: set[str] = field(default_factory=set)

    def lines(self) -> list[str]:
        c = self.counts
        out = [f"{c['new']} stored, {c['duplicate']} already archived, {c['conflict']} conflicting (first copy kept), "
               f"{len(self.refused)} refused; {len(self.studies)} studies"]
        out += [f"  refused {path}: {reason}" for path, reason in self.refused]
        return out


def _files(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield Path(root) / name


def import_folder(folder: Path, archive: Archive, sessions: sessionmaker[Session], *, progress: bool = True,
                  queue: bool = False) -> ImportSummary:
    """Import every DICOM Part-10 file under ``folder``; files that are not are refused with the reason.

    A retrospective cohort is archived for training: no job is made unless ``queue`` (then
    each study waits to be predicted as if PACS had sent it).
    """
    summary = ImportSummary()
    files = list(_files(Path(folder)))
    accepted = set(STORAGE_SOP_CLASSES)
    for path in tqdm(files, desc="import", unit="file", disable=not progress):
        shown = str(path.relative_to(folder))
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            meta = getattr(ds, "file_meta", None)
            if meta is None or "TransferSyntaxUID" not in meta:
                raise NonConformant("not a DICOM Part-10 file (no file meta information)")
            header = read_header(ds)
            if header.sop_class_uid not in accepted:
                raise NonConformant(f"SOP class {header.sop_class_uid} is not one the node stores")
            outcome = store_instance(archive, sessions, path.read_bytes(), header, str(meta.TransferSyntaxUID),
                                     calling_aet="IMPORT", enqueue=queue)
        except (InvalidDicomError, NonConformant, InvalidUID) as exc:
            summary.refused.append((shown, str(exc) or type(exc).__name__))
            continue
        except (OSError, ValueError, TypeError, KeyError, EOFError) as exc:
            summary.refused.append((shown, f"cannot be read: {type(exc).__name__}"))
            continue
        summary.counts[outcome.value] += 1
        summary.studies.add(header.study_uid)
    return summary
