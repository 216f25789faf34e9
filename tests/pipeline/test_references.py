"""Which series and instances a mask references (pipeline.load.references): header only."""

from __future__ import annotations

from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import MRImageStorage

from pipeline.load.references import mask_referenced_instances, mask_referenced_series
from tests.dicom_factory import mask_for, mr_series


def _header_only(ds: Dataset) -> Dataset:
    """``ds`` written as a Part-10 file and read back without pixels, as the index reads it."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer, stop_before_pixels=True)


def _sop_ref(uid: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = MRImageStorage, uid
    return item


def test_seg_series_and_instances_in_order_without_repeats() -> None:
    first, second = mr_series(2), mr_series(2, seed=1)
    seg = mask_for(first, "SEG")
    other = Dataset()
    other.SeriesInstanceUID = second[0].SeriesInstanceUID
    other.ReferencedInstanceSequence = Sequence([_sop_ref(second[0].SOPInstanceUID)])
    repeat = Dataset()
    repeat.SeriesInstanceUID = first[0].SeriesInstanceUID
    repeat.ReferencedInstanceSequence = Sequence([_sop_ref(first[1].SOPInstanceUID)])
    seg.ReferencedSeriesSequence.extend([other, repeat])
    # Derivation Image functional group, shared and per frame.
    derivation = Dataset()
    derivation.SourceImageSequence = Sequence([_sop_ref("1.2.3.4"), _sop_ref(first[0].SOPInstanceUID)])
    frame = Dataset()
    frame.DerivationImageSequence = Sequence([derivation])
    shared = Dataset()
    shared_derivation = Dataset()
    shared_derivation.SourceImageSequence = Sequence([_sop_ref("1.2.3.5")])
    shared.DerivationImageSequence = Sequence([shared_derivation])
    seg.SharedFunctionalGroupsSequence = Sequence([shared])
    seg.PerFrameFunctionalGroupsSequence = Sequence([frame, Dataset()])
    seg.add_new(0x7FE00010, "OB", b"\0\0")  # Pixel Data, not read back
    header = _header_only(seg)
    assert "PixelData" not in header
    assert mask_referenced_series(header) == (first[0].SeriesInstanceUID, second[0].SeriesInstanceUID)
    assert mask_referenced_instances(header) == (
        first[0].SOPInstanceUID, first[1].SOPInstanceUID, second[0].SOPInstanceUID, "1.2.3.5", "1.2.3.4",
    )


def test_rtstruct_series_and_contour_images() -> None:
    images = mr_series(3)
    structure_set = mask_for(images, "RTSTRUCT")
    study_ref = structure_set.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    extra = Dataset()
    extra.SeriesInstanceUID = "1.2.3.9"
    study_ref.RTReferencedSeriesSequence.append(extra)
    contour = Dataset()
    contour.ContourImageSequence = Sequence([_sop_ref("1.2.3.6"), _sop_ref(images[2].SOPInstanceUID)])
    roi = Dataset()
    roi.ContourSequence = Sequence([contour])
    structure_set.ROIContourSequence = Sequence([roi])
    header = _header_only(structure_set)
    assert mask_referenced_series(header) == (images[0].SeriesInstanceUID, "1.2.3.9")
    assert mask_referenced_instances(header) == (*(i.SOPInstanceUID for i in images), "1.2.3.6")


def test_no_references() -> None:
    image = _header_only(mr_series(1)[0])
    assert mask_referenced_series(image) == ()
    assert mask_referenced_instances(image) == ()
    empty = Dataset()
    empty.ReferencedSeriesSequence = Sequence([Dataset()])  # an item without a UID is skipped
    empty.ReferencedFrameOfReferenceSequence = Sequence([Dataset()])
    assert mask_referenced_series(empty) == ()
    assert mask_referenced_instances(empty) == ()


def test_importing_it_loads_no_other_pipeline_module() -> None:
    """The node's receive path uses it: it must stay pydicom and numpy only (no SimpleITK, highdicom,
    torch); the outline reader (an SR's closed regions) is the one pipeline module it brings."""
    import subprocess
    import sys

    code = "import sys, pipeline.load.references; print('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(done.stdout.split())
    assert {m for m in loaded if m.startswith("pipeline")} == {"pipeline", "pipeline.load", "pipeline.load.references",
                                                               "pipeline.load.outline"}
    assert not loaded & {"SimpleITK", "highdicom", "torch"}
