"""Which image series and instances a lesion mask (SEG or RTSTRUCT) references: header only.

One definition, shared by the pipeline's mask selection (:mod:`pipeline.load.select`) and the
node's received-instance header. Only header elements are read, so a dataset read with
``stop_before_pixels`` works. Both trees are read whatever the SOP class (a SEG has no
RTSTRUCT tree and the reverse); whether ``ds`` is a mask is the caller's question.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from pydicom.dataset import Dataset

from pipeline.load.outline import outline_referenced_images

__all__ = ["mask_referenced_instances", "mask_referenced_series"]


def _items(ds: Dataset, keyword: str) -> Iterable[Dataset]:
    return ds.get(keyword) or ()


def _rt_referenced_series(ds: Dataset) -> Iterator[Dataset]:
    """RT Structure Set module (PS3.3 C.8.8.5): ReferencedFrameOfReferenceSequence >
    RTReferencedStudySequence > RTReferencedSeriesSequence items."""
    for frame_ref in _items(ds, "ReferencedFrameOfReferenceSequence"):
        for study_ref in _items(frame_ref, "RTReferencedStudySequence"):
            yield from _items(study_ref, "RTReferencedSeriesSequence")


def _uids(values: Iterable[object]) -> tuple[str, ...]:
    """Non-empty values as strings, first-seen order, de-duplicated."""
    return tuple(dict.fromkeys(str(v) for v in values if v))


def mask_referenced_series(ds: Dataset) -> tuple[str, ...]:
    """Series Instance UIDs a mask references, in order, de-duplicated.

    SEG: Common Instance Reference module (PS3.3 C.12.2) ReferencedSeriesSequence.
    RTSTRUCT: ReferencedFrameOfReferenceSequence > RTReferencedStudySequence >
    RTReferencedSeriesSequence (PS3.3 C.8.8.5).
    """
    series = [item.get("SeriesInstanceUID") for item in _items(ds, "ReferencedSeriesSequence")]
    series += [item.get("SeriesInstanceUID") for item in _rt_referenced_series(ds)]
    return _uids(series)


def mask_referenced_instances(ds: Dataset) -> tuple[str, ...]:
    """Referenced SOP Instance UIDs of a mask's source images, in order, de-duplicated.

    SEG: ReferencedSeriesSequence > ReferencedInstanceSequence, and the Derivation Image
    functional group's SourceImageSequence (shared and per frame, PS3.3 C.7.6.16.2.6).
    RTSTRUCT: RTReferencedSeriesSequence > ContourImageSequence, and each contour's
    ContourImageSequence (ROIContourSequence > ContourSequence, PS3.3 C.8.8.6).
    Viewer outline (SR): the image each closed SCOORD is SELECTED FROM (:mod:`pipeline.load.outline`).
    Mapping them to series needs the study's instances (:func:`pipeline.load.select.referenced_series_uids`).
    """
    references: list[Dataset] = []
    for series_ref in _items(ds, "ReferencedSeriesSequence"):
        references.extend(_items(series_ref, "ReferencedInstanceSequence"))
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        for group in _items(ds, group_keyword):
            for derivation in _items(group, "DerivationImageSequence"):
                references.extend(_items(derivation, "SourceImageSequence"))
    for series_ref in _rt_referenced_series(ds):
        references.extend(_items(series_ref, "ContourImageSequence"))
    for roi in _items(ds, "ROIContourSequence"):
        for contour in _items(roi, "ContourSequence"):
            references.extend(_items(contour, "ContourImageSequence"))
    # a viewer outline (SR): the images its closed regions lie on, not the report's whole evidence
    return _uids([*(item.get("ReferencedSOPInstanceUID") for item in references), *outline_referenced_images(ds)])
