"""What the node reads from a received dataset's header: UIDs and references, nothing else.

Reads only the elements it needs (pydicom converts elements lazily), never the pixels, and
never patient identification. For most instances those elements come from the receive
path's walk of the file (``dataset_check``, ``HEADER_TAGS``): :func:`header_dataset` makes
them a pydicom ``Dataset``, so the file is not parsed a second time. A mask, or any
instance carrying the reference sequences a mask's header is read from, and an SR a viewer
may have saved an outline in (a mask by its content, ``pipeline.load.outline``), is read
whole by pydicom instead (``header_dataset`` returns None).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from db.sop_classes import MASK_SOP_CLASSES, OUTLINE_SR_CLASSES, mask_kind_of
from pipeline.uids import InvalidUID, check_uid
from dicom_node.store.dataset_check import DatasetSummary
from pipeline.load.outline import find_outlines, outline_frame_of_reference
from pipeline.load.references import mask_referenced_instances, mask_referenced_series

__all__ = ["ReceivedHeader", "NonConformant", "SOPClassMismatch", "read_header", "header_dataset", "HEADER_TAGS",
           "MASK_SOP_CLASSES"]


def _tag(keyword: str) -> int:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"{keyword} is not a DICOM keyword")
    return tag


def _tags(*keywords: str) -> frozenset[int]:
    return frozenset(_tag(keyword) for keyword in keywords)


#: The top-level elements :func:`read_header` reads, and the character set that decodes them.
HEADER_TAGS = _tags("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID",
                    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "FrameOfReferenceUID")
#: Top-level sequences ``pipeline.load.references`` reads series references from (SEG, RTSTRUCT).
REFERENCE_SEQUENCES = _tags("ReferencedSeriesSequence", "ReferencedFrameOfReferenceSequence")


def header_dataset(summary: DatasetSummary, sop_class_uid: str) -> Dataset | None:
    """The header elements the walk kept, as a ``Dataset`` :func:`read_header` reads; None when
    the file must be read whole (a mask, reference sequences, a header element not kept)."""
    if (sop_class_uid in MASK_SOP_CLASSES or sop_class_uid in OUTLINE_SR_CLASSES or not summary.kept_all
            or summary.top_level_tags & REFERENCE_SEQUENCES):
        return None
    return Dataset(summary.kept)



class NonConformant(ValueError):
    """The dataset lacks or garbles an attribute the node needs (named in the message)."""


class SOPClassMismatch(NonConformant):
    """The dataset's SOP Class/Instance UID differs from the C-STORE request's."""


@dataclass(frozen=True)
class ReceivedHeader:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str
    series_number: int | None
    series_description: str
    frame_of_reference_uid: str | None
    referenced_series_uids: tuple[str, ...]
    referenced_sop_uids: tuple[str, ...]
    #: "SEG", "RTSTRUCT", "OUTLINE" (an SR with a closed outline) or None (``db.sop_classes.mask_kind_of``)
    mask_kind: str | None = None


def _uid(ds: Dataset, keyword: str) -> str:
    try:
        return check_uid(keyword, ds.get(keyword))
    except InvalidUID as exc:
        raise NonConformant(str(exc)) from None


def read_header(ds: Dataset, affected_sop_class_uid: str | None = None, affected_sop_instance_uid: str | None = None) -> ReceivedHeader:
    """The header of a received instance, checked against the C-STORE request."""
    sop_class = _uid(ds, "SOPClassUID")
    sop_instance = _uid(ds, "SOPInstanceUID")
    if affected_sop_class_uid and sop_class != affected_sop_class_uid:
        raise SOPClassMismatch(f"SOPClassUID {sop_class} differs from the request's {affected_sop_class_uid}")
    if affected_sop_instance_uid and sop_instance != affected_sop_instance_uid:
        raise SOPClassMismatch(f"SOPInstanceUID {sop_instance} differs from the request's {affected_sop_instance_uid}")
    series_number = ds.get("SeriesNumber")
    try:
        series_number = int(series_number) if series_number not in (None, "") else None
    except (TypeError, ValueError):
        series_number = None
    frame_of_reference = ds.get("FrameOfReferenceUID")
    outlines = find_outlines(ds) if sop_class in OUTLINE_SR_CLASSES else []
    mask_kind = mask_kind_of(sop_class, bool(outlines))
    if not frame_of_reference and outlines:  # an outline in patient mm names its frame of reference
        frame_of_reference = outline_frame_of_reference(outlines)
    return ReceivedHeader(
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        sop_instance_uid=sop_instance,
        sop_class_uid=sop_class,
        modality=str(ds.get("Modality", "") or "")[:16],
        series_number=series_number,
        series_description=str(ds.get("SeriesDescription", "") or "")[:64],
        frame_of_reference_uid=str(frame_of_reference) if frame_of_reference else None,
        referenced_series_uids=mask_referenced_series(ds),
        # per-image references are read for masks only (an Enhanced MR has functional groups too)
        referenced_sop_uids=mask_referenced_instances(ds) if mask_kind else (),
        mask_kind=mask_kind,
    )
