"""What the node reads from a received dataset's header: UIDs and references, nothing else.

Reads only the elements it needs (pydicom converts elements lazily), never the pixels, and
never patient identification.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydicom.dataset import Dataset

from db.sop_classes import MASK_SOP_CLASSES
from dicom_node.archive import InvalidUID, check_uid
from pipeline.references import mask_referenced_instances, mask_referenced_series

__all__ = ["ReceivedHeader", "NonConformant", "SOPClassMismatch", "read_header", "MASK_SOP_CLASSES"]



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
        referenced_sop_uids=mask_referenced_instances(ds) if sop_class in MASK_SOP_CLASSES else (),
    )
