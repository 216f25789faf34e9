"""TID 1600 Image Library of the source images, for single-frame and Enhanced (multi-frame) MR.

highdicom 0.28.2's ``MeasurementReport(referenced_images=...)`` fails on an Enhanced MR: its
TID 1604 descriptors read PixelSpacing etc. at the top level, where a multi-frame image has
none (they sit in its functional groups; shared/NOTES.md). The library is therefore built
here, with highdicom's content items and descriptors fed a header that has them.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.report import codes as report_codes

__all__ = ["image_library"]

_CONTAINS = hd.sr.RelationshipTypeValues.CONTAINS
_HAS_ACQ_CONTEXT = hd.sr.RelationshipTypeValues.HAS_ACQ_CONTEXT


def _descriptor_header(image: Dataset) -> Dataset:
    """What highdicom's TID 1602/1604 descriptors need, for single- and multi-frame images.

    highdicom 0.28.2 reads PixelSpacing, SliceThickness, ImageOrientationPatient and
    ImagePositionPatient at the top level, where an Enhanced MR has none (they sit in its
    functional groups). For a multi-frame image they are lifted from the shared (else the
    first per-frame) functional groups; the position of frame 1 is dropped afterwards (it
    does not describe the image). Without pixel measures, Modality is masked so only the
    common descriptors (modality code from the SOP class, frame of reference, rows,
    columns) are written.
    """
    if "PerFrameFunctionalGroupsSequence" not in image:
        return image
    header = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Modality", "FrameOfReferenceUID", "Rows", "Columns"):
        if keyword in image:
            setattr(header, keyword, image[keyword].value)
    groups = [*image.get("SharedFunctionalGroupsSequence", []), image.PerFrameFunctionalGroupsSequence[0]]

    def first(sequence: str, keyword: str) -> object:
        for group in groups:
            for item in group.get(sequence, []):
                if keyword in item:
                    return item[keyword].value
        return None

    values = {
        "PixelSpacing": first("PixelMeasuresSequence", "PixelSpacing"),
        "SliceThickness": first("PixelMeasuresSequence", "SliceThickness"),
        "SpacingBetweenSlices": first("PixelMeasuresSequence", "SpacingBetweenSlices"),
        "ImageOrientationPatient": first("PlaneOrientationSequence", "ImageOrientationPatient"),
        "ImagePositionPatient": first("PlanePositionSequence", "ImagePositionPatient"),
    }
    for keyword, value in values.items():
        if value is not None:
            setattr(header, keyword, value)
    if any(values[k] is None for k in ("PixelSpacing", "SliceThickness", "ImageOrientationPatient",
                                        "ImagePositionPatient")):
        header.Modality = "OT"  # highdicom then writes only the common descriptors
    return header


_FRAME_POSITION = (codes.DCM.ImagePositionPatientX, codes.DCM.ImagePositionPatientY, codes.DCM.ImagePositionPatientZ)


def _library_entry(image: Dataset) -> hd.sr.ImageContentItem:
    """TID 1601 entry: IMAGE (260753009, SCT, "Source") with its TID 1602 descriptors."""
    item = hd.sr.ImageContentItem(
        name=report_codes.SOURCE,
        referenced_sop_class_uid=image.SOPClassUID,
        referenced_sop_instance_uid=image.SOPInstanceUID,
        relationship_type=_CONTAINS,
    )
    descriptors = list(hd.sr.ImageLibraryEntryDescriptors(_descriptor_header(image)))
    if "PerFrameFunctionalGroupsSequence" in image:
        descriptors = [d for d in descriptors if not any(d.name == code for code in _FRAME_POSITION)]
    item.ContentSequence = hd.sr.ContentSequence(descriptors)
    return item


def image_library(images: Sequence[Dataset]) -> hd.sr.ContainerContentItem:
    """TID 1600 Image Library, one group (the source series shares its frame of reference)."""
    group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup, relationship_type=_CONTAINS)
    group.ContentSequence = hd.sr.ContentSequence()
    if "FrameOfReferenceUID" in images[0]:
        group.ContentSequence.append(hd.sr.UIDRefContentItem(
            name=codes.DCM.FrameOfReferenceUID, value=images[0].FrameOfReferenceUID, relationship_type=_HAS_ACQ_CONTEXT,
        ))
    group.ContentSequence.extend(_library_entry(image) for image in images)
    library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary, relationship_type=_CONTAINS)
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library
