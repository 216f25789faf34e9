"""Index the DICOM files of one study by series, headers only: a folder
(:func:`index_study`) or the list of files the node's database holds for it
(:func:`index_files`).

A study folder holds one study's files at any depth, possibly with non-DICOM files beside
them (skipped). Hidden files and folders (name starting with ".") and ``*.tmp`` files are
not read at all: the archive writes each instance to a hidden temporary file (and the node to
a hidden ``.incoming/`` folder) before renaming it into place, so such a file may be half
written. Headers are read with ``stop_before_pixels`` (PS3.10 files); pixels are read
later, only for the chosen series and mask.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from db import sop_classes
from pipeline.errors import SelectionError
from pipeline.load.outline import Outline, find_outlines, outline_frame_of_reference

__all__ = [
    "ENHANCED_MR_SOP_CLASSES",
    "MR_IMAGE_SOP_CLASS",
    "RTSTRUCT_SOP_CLASS",
    "SEG_SOP_CLASS",
    "InstanceHeader",
    "SeriesEntry",
    "StudyIndex",
    "index_files",
    "index_study",
]

logger = logging.getLogger(__name__)

# What is an image and what is a mask: one definition for the node (db.sop_classes).
MR_IMAGE_SOP_CLASS = sop_classes.MR_IMAGE
ENHANCED_MR_SOP_CLASSES = sop_classes.ENHANCED_MR_IMAGES
SEG_SOP_CLASS = sop_classes.SEG
RTSTRUCT_SOP_CLASS = sop_classes.RTSTRUCT


@dataclass(frozen=True)
class InstanceHeader:
    """One SOP instance: where it is and its header (SOP Common, General Series, Frame of Reference)."""

    path: Path
    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    modality: str
    frame_of_reference_uid: str | None
    header: Dataset = field(repr=False, compare=False)
    #: the closed regions of an SR measurement report (a viewer outline), else ()
    outlines: tuple[Outline, ...] = field(default=(), repr=False, compare=False)

    @property
    def mask_kind(self) -> str | None:
        """``"SEG"``, ``"RTSTRUCT"`` or ``"OUTLINE"`` (an SR that outlines a region) for a mask
        object, else None (``db.sop_classes.mask_kind_of``)."""
        return sop_classes.mask_kind_of(self.sop_class_uid, bool(self.outlines))

    @property
    def is_mr_image(self) -> bool:
        """True for MR Image, Enhanced MR and Legacy Converted Enhanced MR instances."""
        return self.sop_class_uid == MR_IMAGE_SOP_CLASS or self.sop_class_uid in ENHANCED_MR_SOP_CLASSES


@dataclass(frozen=True)
class SeriesEntry:
    """The instances of one series (SeriesInstanceUID), in file-walk order."""

    series_uid: str
    modality: str
    instances: tuple[InstanceHeader, ...]

    @property
    def frame_of_reference_uids(self) -> frozenset[str]:
        """Distinct FrameOfReferenceUID values of the series' instances."""
        return frozenset(i.frame_of_reference_uid for i in self.instances if i.frame_of_reference_uid)

    @property
    def is_mr_image_series(self) -> bool:
        """True when the series holds MR images (single- or multi-frame); others beside them are ignored."""
        return any(i.is_mr_image for i in self.instances)


@dataclass(frozen=True)
class StudyIndex:
    """The series, masks and SOP instances of one study (``folder``: where its files are, or the
    list's common folder)."""

    folder: Path
    study_uid: str
    series: dict[str, SeriesEntry]
    masks: tuple[InstanceHeader, ...]
    by_sop_uid: dict[str, InstanceHeader]
    skipped_files: int


def _read_header(path: Path) -> Dataset | None:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, KeyError):
        return None
    if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds or "StudyInstanceUID" not in ds:
        return None  # DICOMDIR, fragments, or not a composite instance
    return ds


def _is_in_progress(name: str) -> bool:
    """True for a hidden name or a ``.tmp`` file: possibly half written, never read."""
    return name.startswith(".") or name.endswith(".tmp")


def _study_files(folder: Path) -> Iterator[Path]:
    """Every complete file under ``folder``, in sorted path order; hidden folders are not entered."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not _is_in_progress(name):
                yield Path(root) / name


def index_study(folder: Path) -> StudyIndex:
    """Read the headers of every DICOM file under ``folder`` and group them by series.

    Raises SelectionError when the folder does not exist, holds no DICOM instance or more than one study.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SelectionError(f"study folder {folder} does not exist or is not a folder")
    return _index(_study_files(folder), folder)


def index_files(files: Iterable[Path]) -> StudyIndex:
    """Index exactly these files (the received instances the database lists for one study).

    A file that is missing or not a composite DICOM instance is counted in ``skipped_files``.
    Raises SelectionError when none is a DICOM instance, or they hold more than one study.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise SelectionError("no files listed for the study")
    where = Path(os.path.commonpath(paths))
    return _index(paths, where if where.is_dir() else where.parent)


def _index(files: Iterable[Path], folder: Path) -> StudyIndex:
    headers: list[InstanceHeader] = []
    skipped = 0
    seen: set[str] = set()
    for path in sorted(files):
        ds = _read_header(path)
        if ds is None:
            skipped += 1
            continue
        sop_uid = str(ds.SOPInstanceUID)
        if sop_uid in seen:
            logger.warning("duplicate SOP instance %s ignored", sop_uid)
            continue
        seen.add(sop_uid)
        for_uid = ds.get("FrameOfReferenceUID")
        if for_uid is None and "ReferencedFrameOfReferenceSequence" in ds:  # RT Structure Set
            refs = ds.ReferencedFrameOfReferenceSequence
            for_uid = refs[0].get("FrameOfReferenceUID") if len(refs) else None
        outlines = tuple(find_outlines(ds))
        if for_uid is None and outlines:  # an outline in patient mm names its frame of reference
            for_uid = outline_frame_of_reference(outlines)
        headers.append(
            InstanceHeader(
                path=path,
                sop_class_uid=str(ds.get("SOPClassUID", "")),
                sop_uid=sop_uid,
                study_uid=str(ds.StudyInstanceUID),
                series_uid=str(ds.SeriesInstanceUID),
                modality=str(ds.get("Modality", "")),
                frame_of_reference_uid=str(for_uid) if for_uid else None,
                header=ds,
                outlines=outlines,
            )
        )
    if not headers:
        raise SelectionError(f"no DICOM files in {folder}")
    studies = sorted({h.study_uid for h in headers})
    if len(studies) > 1:
        raise SelectionError(f"folder holds {len(studies)} studies ({', '.join(studies)}); expected one")
    grouped: dict[str, list[InstanceHeader]] = {}
    for h in headers:
        grouped.setdefault(h.series_uid, []).append(h)
    series = {
        uid: SeriesEntry(series_uid=uid, modality=items[0].modality, instances=tuple(items))
        for uid, items in grouped.items()
    }
    masks = tuple(h for h in headers if h.mask_kind is not None)
    logger.info(
        "indexed study %s: %d instances in %d series, %d masks, %d files skipped",
        studies[0], len(headers), len(series), len(masks), skipped,
    )
    return StudyIndex(
        folder=folder,
        study_uid=studies[0],
        series=series,
        masks=masks,
        by_sop_uid={h.sop_uid: h for h in headers},
        skipped_files=skipped,
    )
