"""Issue 31: a viewer's outline (an SR measurement report) is a lesion mask.

The SRs are written by highdicom, in the two forms viewers and toolkits use: the OHIF form
(TID 1501: a NUM INFERRED FROM a SCOORD) and the planar ROI of TID 1410 (the SCOORD or
SCOORD3D directly in the group). Each accepted shape is filled onto the phantom's MR grid and
checked against what it must cover; each refused one is not taken as a mask.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes

from dicom_node.store.header import read_header
from pipeline.errors import SelectionError
from pipeline.load.index import index_study
from pipeline.load.outline import find_outlines
from pipeline.load.study import load_study
from pipeline.load.volume import frame_planes

TRACKING_UID = "2.25.31000000000000000000000000000001"


def _study_without_mask(phantom_study, tmp_path: Path, geometry: str = "axial2d") -> tuple[Path, list[pydicom.Dataset]]:
    """The phantom's MR series alone, in a folder of its own, and its headers by slice k."""
    study = phantom_study(geometry, "seg")
    folder = tmp_path / "study"
    shutil.copytree(study.folder, folder, ignore=shutil.ignore_patterns("SEG"))
    headers = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True)
                                                     for p in sorted(folder.rglob("*.dcm")))}
    return folder, [headers[uid] for uid in study.image_sop_uids]


def _source(image: pydicom.Dataset, frame: int | None = None) -> hd.sr.SourceImageForRegion:
    return hd.sr.SourceImageForRegion.from_source_image(image, referenced_frame_numbers=[frame] if frame else None)


def _tracking(number: int = 1) -> hd.sr.TrackingIdentifier:
    return hd.sr.TrackingIdentifier(uid=f"{TRACKING_UID[:-1]}{number}", identifier=f"Lesion {number}")


def ohif_group(graphic_type: str, points: np.ndarray, image: pydicom.Dataset, number: int = 1,
               frame: int | None = None) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """As OHIF saves an annotation: an area NUM INFERRED FROM the SCOORD on one image."""
    coordinates = hd.sr.CoordinatesForMeasurement(graphic_type=graphic_type, graphic_data=np.asarray(points, float),
                                                  source_image=_source(image, frame))
    measurement = hd.sr.Measurement(name=codes.SCT.Area, value=1.0, unit=codes.UCUM.SquareMillimeter,
                                    referenced_coordinates=[coordinates])
    return hd.sr.MeasurementsAndQualitativeEvaluations(tracking_identifier=_tracking(number), measurements=[measurement])


def tid1410_group(region: hd.sr.ImageRegion | hd.sr.ImageRegion3D, number: int = 1):  # type: ignore[no-untyped-def]
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(tracking_identifier=_tracking(number),
                                                                referenced_region=region)


def write_report(folder: Path, groups: list, evidence: list[pydicom.Dataset], *, sop_class=hd.sr.EnhancedSR,  # type: ignore[no-untyped-def]
                 name: str = "SR", time: str = "120000") -> pydicom.Dataset:
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=hd.sr.CodedConcept("24587-8", "LN", "MR brain W and WO contrast IV"),
        imaging_measurements=groups,
    )
    sr = sop_class(evidence=evidence, content=report, series_instance_uid=hd.UID(), series_number=90,
                   sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Viewer", is_complete=True)
    sr.ContentTime = time
    (folder / "SR").mkdir(exist_ok=True)
    sr.save_as(folder / "SR" / f"{name}.dcm", enforce_file_format=True)
    return sr


def _lesion_pixels(study_folder: Path) -> tuple[np.ndarray, int]:
    loaded = load_study(study_folder)
    array = sitk.GetArrayFromImage(loaded.lesion)
    return array, loaded


def test_an_ohif_ellipse_is_the_lesion_and_the_node_records_what_it_read(phantom_study, tmp_path) -> None:
    seg_study = load_study(phantom_study("axial2d", "seg").folder)
    reference = sitk.GetArrayFromImage(seg_study.lesion)
    k = int(np.argmax(reference.reshape(reference.shape[0], -1).sum(axis=1)))
    folder, images = _study_without_mask(phantom_study, tmp_path)
    rows, columns = np.nonzero(reference[k])
    # the ellipse a reader draws: through the lesion's extent on its largest slice
    cr, cc = (rows.min() + rows.max() + 1) / 2, (columns.min() + columns.max() + 1) / 2
    hr, hc = (rows.max() + 1 - rows.min()) / 2, (columns.max() + 1 - columns.min()) / 2
    points = [[cc - hc, cr], [cc + hc, cr], [cc, cr - hr], [cc, cr + hr]]
    if hr > hc:
        points = [points[2], points[3], points[0], points[1]]  # the major axis first
    # the images are one per slice k in acquisition order; the volume's k is axial LPS order
    image = next(ds for ds in images if str(ds.SOPInstanceUID) in seg_study.source_sop_uids[k])
    sr = write_report(folder, [ohif_group("ELLIPSE", np.array(points), image)], [image])

    loaded = load_study(folder)
    lesion = sitk.GetArrayFromImage(loaded.lesion)
    assert loaded.mask_kind == "OUTLINE" and loaded.mask_sop_uid == sr.SOPInstanceUID
    assert np.count_nonzero(lesion.reshape(lesion.shape[0], -1).any(axis=1)) == 1  # one slice: the outlined one
    inside, truth = lesion[k] > 0, reference[k] > 0
    assert 2 * (inside & truth).sum() / (inside.sum() + truth.sum()) > 0.8
    record = loaded.selection["lesion"]
    assert record["tracking_uid"] == f"{TRACKING_UID[:-1]}1" and record["tracking_id"] == "Lesion 1"
    assert record["description"] == "viewer outline (ELLIPSE) on 1 slice"
    assert loaded.selection["mask_kind"] == "OUTLINE"


def test_a_closed_polyline_fills_exactly_the_pixels_it_encloses(phantom_study, tmp_path) -> None:
    """SCOORD pixel coordinates put 0.0\\0.0 at the outer corner of the top left pixel: a
    square from (100, 110) to (110, 118) encloses the centres of 10 x 8 pixels, no more."""
    folder, images = _study_without_mask(phantom_study, tmp_path)
    image = images[len(images) // 2]
    square = np.array([[100, 110], [110, 110], [110, 118], [100, 118], [100, 110]], float)
    region = hd.sr.ImageRegion(graphic_type="POLYLINE", graphic_data=square, source_image=_source(image))
    write_report(folder, [tid1410_group(region)], [image])

    loaded = load_study(folder)
    lesion = sitk.GetArrayFromImage(loaded.lesion)
    assert lesion.sum() == 80
    k = next(k for k, uids in enumerate(loaded.source_sop_uids) if str(image.SOPInstanceUID) in uids)
    plane = frame_planes(next(i for i in loaded.series_instances if i.sop_uid == image.SOPInstanceUID))[0]
    # the filled pixels, mapped back to the image's own rows and columns
    ks, js, is_ = np.nonzero(lesion)
    assert set(ks) == {k}
    points = [loaded.lesion.TransformIndexToPhysicalPoint((int(i), int(j), int(k))) for i, j in zip(is_, js)]
    offsets = np.asarray(points) - np.asarray(plane.position)
    columns = offsets @ np.asarray(plane.orientation[:3]) / plane.pixel_spacing[1]
    rows = offsets @ np.asarray(plane.orientation[3:]) / plane.pixel_spacing[0]
    assert (np.round(columns).min(), np.round(columns).max()) == (100, 109)
    assert (np.round(rows).min(), np.round(rows).max()) == (110, 117)


def test_a_circle_and_a_3d_polygon_and_ellipse_are_outlines_too(phantom_study, tmp_path) -> None:
    folder, images = _study_without_mask(phantom_study, tmp_path)
    image = images[len(images) // 2]
    spacing = [float(v) for v in image.PixelSpacing]
    circle = hd.sr.ImageRegion(graphic_type="CIRCLE", graphic_data=np.array([[120.0, 120.0], [128.0, 120.0]]),
                               source_image=_source(image))
    write_report(folder, [tid1410_group(circle)], [image], name="circle")
    loaded = load_study(folder)
    area = sitk.GetArrayFromImage(loaded.lesion).sum()
    assert abs(area - np.pi * 8 ** 2) < 0.1 * np.pi * 8 ** 2, area  # pixels: a radius of 8 columns
    assert spacing[0] == spacing[1]  # the phantom's pixels are square, so the circle is one

    # in patient mm on the same image's plane: a square POLYGON and an ELLIPSE (SCOORD3D)
    (folder / "SR" / "circle.dcm").unlink()
    position, orientation = np.asarray(image.ImagePositionPatient, float), np.asarray(image.ImageOrientationPatient, float)

    def mm(column: float, row: float) -> list[float]:
        return list(position + (column - 0.5) * spacing[1] * orientation[:3] + (row - 0.5) * spacing[0] * orientation[3:])

    polygon = hd.sr.ImageRegion3D(graphic_type="POLYGON", graphic_data=np.array([mm(100, 110), mm(110, 110),
                                                                                 mm(110, 118), mm(100, 118), mm(100, 110)]),
                                  frame_of_reference_uid=image.FrameOfReferenceUID)
    write_report(folder, [tid1410_group(polygon)], [image], sop_class=hd.sr.Comprehensive3DSR, name="polygon")
    loaded = load_study(folder)
    assert sitk.GetArrayFromImage(loaded.lesion).sum() == 80
    assert loaded.selection["lesion"]["outlines"][0]["frame_of_reference_uid"] == image.FrameOfReferenceUID

    (folder / "SR" / "polygon.dcm").unlink()
    ellipse = hd.sr.ImageRegion3D(graphic_type="ELLIPSE", graphic_data=np.array([mm(110, 120), mm(130, 120),
                                                                                 mm(120, 115), mm(120, 125)]),
                                  frame_of_reference_uid=image.FrameOfReferenceUID)
    write_report(folder, [tid1410_group(ellipse)], [image], sop_class=hd.sr.Comprehensive3DSR, name="ellipse")
    area = sitk.GetArrayFromImage(load_study(folder).lesion).sum()
    assert abs(area - np.pi * 10 * 5) < 0.1 * np.pi * 50, area


def test_several_outlines_are_several_lesions_and_the_largest_is_read(phantom_study, tmp_path) -> None:
    folder, images = _study_without_mask(phantom_study, tmp_path)
    image = images[len(images) // 2]
    small = np.array([[60, 60], [66, 60], [66, 66], [60, 66], [60, 60]], float)
    large = np.array([[120, 120], [134, 120], [134, 134], [120, 134], [120, 120]], float)
    write_report(folder, [ohif_group("POLYLINE", small, image, 1), ohif_group("POLYLINE", large, image, 2)], [image])
    loaded = load_study(folder)
    assert sitk.GetArrayFromImage(loaded.lesion).sum() == 14 * 14
    assert loaded.lesion_number == 2 and loaded.selection["lesion"]["tracking_uid"] == f"{TRACKING_UID[:-1]}2"
    assert [g["voxels_on_image"] for g in loaded.selection["lesion"]["groups"]] == [36, 196]


@pytest.mark.parametrize("shape", ["point", "open polyline", "multipoint"])
def test_points_lines_and_open_polylines_are_not_masks(phantom_study, tmp_path, shape: str) -> None:
    folder, images = _study_without_mask(phantom_study, tmp_path)
    image = images[len(images) // 2]
    graphic_type, points = {
        "point": ("POINT", [[120.0, 120.0]]),
        "open polyline": ("POLYLINE", [[100.0, 100.0], [120.0, 100.0], [120.0, 120.0], [100.0, 120.0]]),
        "multipoint": ("MULTIPOINT", [[100.0, 100.0], [120.0, 100.0], [120.0, 120.0]]),
    }[shape]
    sr = write_report(folder, [ohif_group(graphic_type, np.array(points), image)], [image])
    assert find_outlines(sr) == []
    assert read_header(sr).mask_kind is None and read_header(sr).referenced_sop_uids == ()
    assert index_study(folder).masks == ()
    with pytest.raises(SelectionError, match="no lesion mask"):
        load_study(folder)


def test_an_outline_on_an_image_not_in_the_study_is_refused_with_its_reason(phantom_study, tmp_path) -> None:
    folder, images = _study_without_mask(phantom_study, tmp_path)
    other = pydicom.Dataset()
    other.update(images[0])
    other.SOPInstanceUID = "2.25.31000000000000000000000000000099"
    other.SeriesInstanceUID = "2.25.31000000000000000000000000000098"
    sr = write_report(folder, [ohif_group("CIRCLE", np.array([[120.0, 120.0], [128.0, 120.0]]), other)], [other])
    with pytest.raises(SelectionError) as refused:
        load_study(folder)
    assert str(refused.value).endswith(f": OUTLINE {sr.SOPInstanceUID}: outline SR: its outline lies on image "
                                       f"{other.SOPInstanceUID}, not an image of the study"), str(refused.value)


def test_the_receive_path_takes_an_outline_sr_as_a_mask_naming_its_image(phantom_study, tmp_path) -> None:
    folder, images = _study_without_mask(phantom_study, tmp_path)
    image = images[3]
    sr = write_report(folder, [ohif_group("ELLIPSE", np.array([[110.0, 120], [130, 120], [120, 115], [120, 125]]),
                                          image)], images)  # the report's evidence names every image
    header = read_header(sr)
    assert header.mask_kind == "OUTLINE"
    assert header.referenced_sop_uids == (str(image.SOPInstanceUID),)  # the outlined image, not the evidence
