"""The node's SR read by OHIF's own DICOM libraries outside the browser: dcmjs parses it and
``@cornerstonejs/adapters``' ``MeasurementReport.generateToolState`` (what OHIF's SR extension
calls to hydrate an SR) makes one arrow annotation on the lesion, labelled with the result in
words and carrying the SEG segment's tracking UID, for Comprehensive 3D SR and Comprehensive SR.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_node.report import AlgorithmInfo, LesionFinding, build_sr
from dicom_node.report.image_point import nearest_image_point
from dicom_node.report.sr import result_text
from tests.viewers.ohif_app import installed_or_skip
from tests.viewers.sr_reader import image_planes, install_sr_reader, read_sr

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def reader() -> Path:
    return installed_or_skip(install_sr_reader, "dcmjs and @cornerstonejs/adapters")


@pytest.mark.parametrize(("comprehensive_3d", "positive"), [(True, True), (False, False)])
def test_cornerstone_adapters_find_the_lesion_measurement(phantom_study, reader: Path, tmp_path: Path,
                                                          comprehensive_3d: bool, positive: bool) -> None:
    phantom = phantom_study("axial2d", "seg")
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(phantom.folder.rglob("*.dcm"))]
    images = [ds for ds in datasets if ds.Modality == "MR"]
    (seg,) = [ds for ds in datasets if ds.Modality == "SEG"]
    segment = seg.SegmentSequence[0]
    finding = LesionFinding(segment_number=1, tracking_id=str(segment.TrackingID), tracking_uid=str(segment.TrackingUID),
                            probability=0.83456 if positive else 0.2104, positive=positive)
    algorithm = AlgorithmInfo(name="egfr-resnet50", version="2026.1", device_uid=generate_uid(), manufacturer="egfr-node",
                              model_name="ResNet-50 fold ensemble", threshold=0.5, slice_aggregation="median",
                              fold_aggregation="mean")
    point = nearest_image_point(images, phantom.lesion_centroid_lps)
    sr = build_sr(images, seg, finding, algorithm, lesion_point=point, sop_instance_uid=generate_uid(),
                  series_instance_uid=generate_uid(), comprehensive_3d=comprehensive_3d)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)

    read = read_sr(reader, path, image_planes(images))

    assert read["sopClassUID"] == sr.SOPClassUID
    (measurement,) = read["measurements"]  # the TID 1411 group has no geometry: no annotation of its own
    assert measurement["toolType"] == "ArrowAnnotate"
    assert measurement["trackingUID"] == finding.tracking_uid  # the SEG segment's, as in the 1411 group
    assert measurement["label"] == result_text(finding) and "research use" in measurement["label"]
    assert measurement["referencedImageId"] == f"egfr:{point.sop_instance_uid}:1"
    assert measurement["frameOfReferenceUID"] == images[0].FrameOfReferenceUID
    assert measurement["finding"]["CodeMeaning"] == "Secondary malignant neoplasm of brain"
    # the arrow's tip, mapped to patient space by Cornerstone, is the lesion centroid on its image plane
    tip = np.array(measurement["points"][0])
    assert np.linalg.norm(tip - np.asarray(phantom.lesion_centroid_lps)) == pytest.approx(point.distance_mm, abs=0.01)
    viewer_group, volume_group = read["groups"]
    assert [viewer_group["trackingUID"], volume_group["trackingUID"]] == [finding.tracking_uid] * 2
    assert viewer_group["numbers"] == [{"name": "Probability", "value": round(finding.probability, 3), "unit": "1"}]
    assert volume_group["numbers"] == []
    # The one warning is the adapters' code-type probe on the 1411 group, which has no spatial
    # coordinate to probe (docs/conformance.md 8.1.1): caught there, the group skipped, nothing lost.
    assert read["warnings"] == [
        "Unable to generate tool state for  TypeError: Cannot read properties of undefined (reading 'ValueType')"]
