"""MR volume loading (issue 3 point 2): sorting, rescale, reorientation, malformed series.

The series are built by :mod:`tests.dicom_factory` (pydicom, and highdicom for multi-frame).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from pipeline.load.index import index_study
from pipeline.errors import VolumeError
from pipeline.load.grid import GRID_ACQUIRED_TILTED, GRID_ORTHOGONAL, GRID_RESAMPLED
from pipeline.load.volume import load_series_volume
from tests.dicom_factory import (
    CORONAL,
    SAGITTAL,
    load,
    make_enhanced,
    make_mr_series,
    oblique_sagittal,
    ramp,
    source_points,
    tilted_axial,
    write_datasets,
)


def assert_values_at_patient_points(image: sitk.Image, datasets: list[Dataset]) -> int:
    """Every source pixel's value is found, exactly, in the voxel its patient point maps to."""
    points, values = source_points(datasets)
    checked = 0
    for point, value in zip(points.reshape(-1, 3), values.ravel()):
        index = image.TransformPhysicalPointToIndex(tuple(float(v) for v in point))
        assert image[index] == float(value)
        checked += 1
    return checked


# --- tests -----------------------------------------------------------------------------------


def test_shuffled_slices_are_sorted_along_the_normal(tmp_path: Path) -> None:
    values = ramp((7, 5, 6))
    datasets = make_mr_series(values, origin=(-3.0, -2.0, 10.0), spacing=(0.8, 0.9, 2.5))
    random.Random(1).shuffle(datasets)
    write_datasets(datasets, tmp_path, shuffle_names=True)
    volume = load_series_volume(next(iter(index_study(tmp_path).series.values())))
    array = sitk.GetArrayFromImage(volume.image)
    np.testing.assert_array_equal(array, values.astype(np.float32))
    assert volume.image.GetOrigin() == pytest.approx((-3.0, -2.0, 10.0))
    assert volume.image.GetSpacing() == pytest.approx((0.9, 0.8, 2.5))
    assert volume.image.GetDirection() == tuple(np.eye(3).ravel())
    assert (volume.grid, volume.tilt_deg, volume.obliquity_deg) == (GRID_ORTHOGONAL, 0.0, 0.0)
    instance_number = {ds.SOPInstanceUID: int(ds.InstanceNumber) for ds in datasets}
    assert [instance_number[u] for (u,) in volume.source_sop_uids] == list(range(1, 8))


def test_slices_acquired_head_to_feet_come_out_feet_first(tmp_path: Path) -> None:
    values = ramp((4, 5, 5))
    # Row along -x (patient left to right): DICOMOrient flips it without interpolation.
    datasets = make_mr_series(values, orientation=((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)))
    volume = load(datasets, tmp_path)
    array = sitk.GetArrayFromImage(volume.image)
    # normal = (-1,0,0) x (0,1,0) = (0,0,-1): slice k at z = 5 - 2k, so axial slice 0 is k=3.
    np.testing.assert_array_equal(array, values[::-1, :, ::-1].astype(np.float32))
    assert volume.image.GetOrigin() == pytest.approx((-14.0, -12.0, -1.0))


def test_rescale_slope_and_intercept_are_applied(tmp_path: Path) -> None:
    values = ramp((3, 4, 4))
    volume = load(make_mr_series(values, slope=0.5, intercept=-100.0), tmp_path)
    array = sitk.GetArrayFromImage(volume.image)
    assert array.dtype == np.float32
    np.testing.assert_allclose(array, values * 0.5 - 100.0)


def test_sagittal_acquisition_reoriented_keeps_values_at_patient_points(tmp_path: Path) -> None:
    values = ramp((6, 7, 8), seed=3)  # 6 sagittal slices of 7 rows x 8 columns
    spacing = (1.5, 1.0, 2.0)
    origin = (20.0, -30.0, 40.0)
    volume = load(make_mr_series(values, orientation=SAGITTAL, spacing=spacing, origin=origin), tmp_path)
    assert volume.acquisition_plane == "sagittal"
    image = volume.image
    assert image.GetDirection() == pytest.approx(tuple(np.eye(3).ravel()))
    assert image.GetSize() == (6, 8, 7)  # x: slices, y: columns (A-P), z: rows (S-I)
    row, col = np.array(SAGITTAL[0]), np.array(SAGITTAL[1])
    normal = np.cross(row, col)
    for k, r, c in [(0, 0, 0), (5, 6, 7), (2, 3, 4), (4, 1, 6), (1, 5, 2)]:
        point = np.array(origin) + c * spacing[1] * row + r * spacing[0] * col + k * spacing[2] * normal
        index = image.TransformPhysicalPointToIndex(tuple(point))
        assert image[index] == pytest.approx(float(values[k, r, c]))
    # Every axial slice crosses all six sagittal slices.
    assert all(len(uids) == 6 for uids in volume.source_sop_uids)
    assert len(volume.source_sop_uids) == 7


def test_coronal_acquisition_reoriented(tmp_path: Path) -> None:
    values = ramp((3, 4, 5), seed=4)
    volume = load(make_mr_series(values, orientation=CORONAL), tmp_path)
    assert volume.acquisition_plane == "coronal"
    array = sitk.GetArrayFromImage(volume.image)  # [z, y, x]
    # coronal: row -> +x, col -> -z, normal = (1,0,0) x (0,0,-1) = (0,1,0) -> +y
    np.testing.assert_array_equal(array, np.transpose(values, (1, 0, 2))[::-1].astype(np.float32))


def test_enhanced_multiframe_matches_single_frame(tmp_path: Path) -> None:
    values = ramp((5, 6, 7), seed=5)
    datasets = make_mr_series(values, slope=2.0, intercept=1.0)
    single = load(datasets, tmp_path / "single")
    multi_ds = make_enhanced(datasets)
    multi = load([multi_ds], tmp_path / "multi")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(multi.image), sitk.GetArrayFromImage(single.image))
    assert multi.image.GetOrigin() == pytest.approx(single.image.GetOrigin())
    assert multi.image.GetSpacing() == pytest.approx(single.image.GetSpacing())
    assert multi.source_sop_uids == ((str(multi_ds.SOPInstanceUID),),) * 5


def _series_uid(datasets: list[Dataset]) -> str:
    return str(datasets[0].SeriesInstanceUID)


def test_missing_slice_is_named(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((6, 4, 4)), spacing=(1.0, 1.0, 4.0), origin=(0.0, 0.0, 0.0))
    del datasets[3]  # z = 12 mm
    with pytest.raises(VolumeError) as err:
        load(datasets, tmp_path)
    assert str(err.value) == (
        f"series {_series_uid(datasets)}: slice spacing varies from 4.00 to 8.00 mm "
        "(missing slice near 12.00 mm along the slice normal?)"
    )


def test_non_uniform_spacing(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((5, 4, 4)), spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0))
    datasets[4].ImagePositionPatient = [0.0, 0.0, 8.5]  # last gap 2.5 mm instead of 2.0
    with pytest.raises(VolumeError, match=r"slice spacing varies from 2\.00 to 2\.50 mm") as err:
        load(datasets, tmp_path)
    assert _series_uid(datasets) in str(err.value)


def test_gantry_tilt(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((5, 4, 4)), spacing=(1.0, 1.0, 3.0), origin=(0.0, 0.0, 0.0))
    for k, ds in enumerate(datasets):  # positions sheared along y by tan(15 deg) per mm of z
        ds.ImagePositionPatient = [0.0, k * 3.0 * math.tan(math.radians(15)), k * 3.0]
    with pytest.raises(VolumeError) as err:
        load(datasets, tmp_path)
    assert str(err.value) == (
        f"series {_series_uid(datasets)}: slice positions are not along the slice normal "
        "(gantry tilt or shear of about 15.0 deg)"
    )


def test_mixed_orientations(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((4, 4, 4)))
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    datasets[2].ImageOrientationPatient = [c, s, 0.0, -s, c, 0.0]
    with pytest.raises(VolumeError, match=r"mixed slice orientations \(ImageOrientationPatient differs by up to 0\.174"):
        load(datasets, tmp_path)


def test_mixed_sizes(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((4, 4, 4)))
    datasets[1].Rows, datasets[1].Columns = 2, 8
    with pytest.raises(VolumeError, match=r"mixed slice sizes \(2x8 and 4x4 rows x columns\)"):
        load(datasets, tmp_path)


def test_mixed_pixel_spacing(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((4, 4, 4)))
    datasets[1].PixelSpacing = [0.5, 0.5]
    with pytest.raises(VolumeError, match=r"mixed pixel spacing \(0\.500 to 1\.000 mm\)"):
        load(datasets, tmp_path)


def test_duplicate_positions(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((4, 4, 4)), origin=(0.0, 0.0, 0.0))
    datasets[3].ImagePositionPatient = list(datasets[2].ImagePositionPatient)
    with pytest.raises(VolumeError, match=r"frames share a position \(1 duplicate, first at 4\.00 mm"):
        load(datasets, tmp_path)


def test_axial_series_tilted_5_deg_keeps_its_acquired_slices(tmp_path: Path) -> None:
    values = ramp((6, 12, 10), seed=11)
    datasets = make_mr_series(values, orientation=tilted_axial(5.0), spacing=(1.0, 1.0, 5.0), origin=(-5.0, -6.0, -12.0))
    volume = load(datasets, tmp_path)
    assert volume.grid == GRID_ACQUIRED_TILTED and not volume.resampled
    assert volume.tilt_deg == pytest.approx(5.0, abs=1e-4)
    assert volume.obliquity_deg == pytest.approx(5.0, abs=1e-4)
    assert volume.slice_spacing_mm == pytest.approx(5.0)
    assert "within max_axial_tilt_degrees=25" in volume.grid_rule
    image = volume.image
    # No interpolation: the voxels are the stored pixels, slice k = acquired slice k.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values.astype(np.float32))
    assert image.GetSize() == (10, 12, 6) and image.GetSpacing() == pytest.approx((1.0, 1.0, 5.0))
    c, s = math.cos(math.radians(5.0)), math.sin(math.radians(5.0))
    assert image.GetDirection() == pytest.approx((1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c), abs=1e-9)
    assert image.GetOrigin() == pytest.approx((-5.0, -6.0, -12.0))
    assert volume.source_sop_uids == tuple((ds.SOPInstanceUID,) for ds in datasets)
    assert assert_values_at_patient_points(image, datasets) == values.size
    # The far corner of the last slice: index -> mm goes through the tilted direction.
    corner = np.array(image.TransformIndexToPhysicalPoint((9, 11, 5)))
    expected = np.array([-5.0, -6.0, -12.0]) + 9 * np.array([1.0, 0, 0]) + 11 * np.array([0, c, s]) + 25 * np.array([0, -s, c])
    assert corner == pytest.approx(expected, abs=1e-6)


def test_tilted_axial_series_stored_right_to_left_and_head_first_is_flipped_not_interpolated(tmp_path: Path) -> None:
    values = ramp((5, 8, 9), seed=12)
    c, s = math.cos(math.radians(7.0)), math.sin(math.radians(7.0))
    # Rows towards patient right, slices stored superior -> inferior (normal (0, s, -c)).
    datasets = make_mr_series(values, orientation=((-1.0, 0.0, 0.0), (0.0, c, s)), spacing=(1.0, 1.0, 3.0),
                              origin=(4.0, -4.0, 6.0))
    volume = load(datasets, tmp_path)
    assert volume.grid == GRID_ACQUIRED_TILTED and volume.tilt_deg == pytest.approx(7.0, abs=1e-4)
    image = volume.image
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values[::-1, :, ::-1].astype(np.float32))
    direction = np.array(image.GetDirection()).reshape(3, 3)
    assert np.all(np.diag(direction) > math.cos(math.radians(7.0)) - 1e-9)  # i ~ +x, j ~ +y, k ~ +z
    assert assert_values_at_patient_points(image, datasets) == values.size
    assert volume.source_sop_uids == tuple((ds.SOPInstanceUID,) for ds in datasets[::-1])


def test_tilted_enhanced_multiframe_matches_its_single_frames(tmp_path: Path) -> None:
    values = ramp((4, 6, 7), seed=13)
    datasets = make_mr_series(values, orientation=tilted_axial(6.0), spacing=(1.0, 1.0, 4.0))
    single = load(datasets, tmp_path / "single")
    multi = load([make_enhanced(datasets)], tmp_path / "multi")
    assert multi.grid == GRID_ACQUIRED_TILTED and multi.tilt_deg == pytest.approx(6.0, abs=1e-4)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(multi.image), values.astype(np.float32))
    assert multi.image.GetDirection() == pytest.approx(single.image.GetDirection(), abs=1e-9)
    assert multi.image.GetOrigin() == pytest.approx(single.image.GetOrigin(), abs=1e-6)


def test_axial_series_tilted_40_deg_is_refused_naming_tilt_and_limit(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((4, 6, 6)), orientation=tilted_axial(40.0), spacing=(1.0, 1.0, 5.0))
    with pytest.raises(VolumeError) as err:
        load(datasets, tmp_path)
    assert str(err.value) == (
        f"series {_series_uid(datasets)}: oblique axial acquisition, slice normal 40.0 deg from the S axis, "
        "more than max_axial_tilt_degrees=25; its slices are 5.00 mm apart, more than max_resample_slice_mm=1.5: "
        "resampling onto an axial grid would blend acquired slices (rule resample_oblique=true forces it)"
    )
    # A wider limit keeps its acquired slices.
    volume = load_series_volume(next(iter(index_study(tmp_path).series.values())), max_axial_tilt_degrees=44.0)
    assert volume.grid == GRID_ACQUIRED_TILTED and volume.tilt_deg == pytest.approx(40.0, abs=1e-4)


def test_in_plane_rotation_counts_against_the_axial_limit(tmp_path: Path) -> None:
    c, s = math.cos(math.radians(30.0)), math.sin(math.radians(30.0))
    datasets = make_mr_series(ramp((4, 6, 6)), orientation=((c, s, 0.0), (-s, c, 0.0)), spacing=(1.0, 1.0, 5.0))
    with pytest.raises(VolumeError, match=r"slice normal 0\.0 deg from the S axis \(axes up to 30\.0 deg from the "
                                          r"patient axes\), more than max_axial_tilt_degrees=25; its slices are 5\.00 mm"):
        load(datasets, tmp_path)


def test_zero_axial_limit_sends_a_small_tilt_to_the_resampling_rule(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((4, 6, 6)), orientation=tilted_axial(5.0), spacing=(1.0, 1.0, 5.0))
    with pytest.raises(VolumeError, match=r"5\.0 deg from the S axis, more than max_axial_tilt_degrees=0; "
                                          r"its slices are 5\.00 mm apart.*would blend acquired slices"):
        load(datasets, tmp_path, max_axial_tilt_degrees=0.0)


def _linear_sagittal(spacing: tuple[float, float, float], tmp_path: Path, **policy: object):
    k, r, col = np.indices((8, 12, 10))
    values = 100 + 3 * col + 2 * r + 5 * k  # linear: trilinear interpolation reproduces it exactly
    datasets = make_mr_series(values, orientation=oblique_sagittal(10.0), spacing=spacing, origin=(20.0, -6.0, 6.0))
    return datasets, load(datasets, tmp_path, **policy)


def test_oblique_sagittal_1mm_series_is_resampled_by_default(tmp_path: Path) -> None:
    _, volume = _linear_sagittal((1.0, 1.0, 1.0), tmp_path)
    assert volume.grid == GRID_RESAMPLED and volume.resampled
    assert volume.acquisition_plane == "sagittal" and volume.tilt_deg == pytest.approx(10.0, abs=1e-4)
    assert "slice spacing 1.00 mm <= max_resample_slice_mm=1.5" in volume.grid_rule
    image, acquired = volume.image, volume.acquired
    assert image.GetDirection() == tuple(np.eye(3).ravel())
    checked = 0
    for index in np.ndindex(*image.GetSize()):
        ijk = np.array(acquired.TransformPhysicalPointToContinuousIndex(image.TransformIndexToPhysicalPoint(index)))
        if np.all(ijk >= 0) and np.all(ijk <= np.array(acquired.GetSize()) - 1):
            assert image[index] == pytest.approx(100 + 3 * ijk[0] + 2 * ijk[1] + 5 * ijk[2], abs=1e-3)
            checked += 1
    assert checked > 300


def test_oblique_sagittal_5mm_series_is_refused_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(VolumeError) as err:  # the same series as above, at 5 mm slice spacing
        _linear_sagittal((1.0, 1.0, 5.0), tmp_path)
    message = str(err.value)
    assert message.startswith("series ") and message.count("\n") == 0
    assert ": oblique sagittal acquisition, slice normal 10.0 deg from the L axis, not near-axial" in message
    assert ("its slices are 5.00 mm apart, more than max_resample_slice_mm=1.5: "
            "resampling onto an axial grid would blend acquired slices") in message


def test_resample_oblique_true_and_false_override_the_spacing_rule(tmp_path: Path) -> None:
    _, forced = _linear_sagittal((1.0, 1.0, 5.0), tmp_path / "forced", resample_oblique=True)
    assert forced.grid == GRID_RESAMPLED and "rule resample_oblique=true" in forced.grid_rule
    assert forced.image.GetSpacing() == pytest.approx((5.0, 1.0, 1.0))
    with pytest.raises(VolumeError, match=r"resampling onto an axial grid is off \(rule resample_oblique=false\)$"):
        _linear_sagittal((1.0, 1.0, 1.0), tmp_path / "off", resample_oblique=False)
    with pytest.raises(ValueError, match='Argument "resample_oblique" must be true, false or "auto"'):
        _linear_sagittal((1.0, 1.0, 1.0), tmp_path / "bad", resample_oblique="yes")


def test_missing_geometry_attribute(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((3, 4, 4)))
    del datasets[1].ImagePositionPatient
    with pytest.raises(VolumeError, match=f"instance {datasets[1].SOPInstanceUID}: ImagePositionPatient missing"):
        load(datasets, tmp_path)


@pytest.mark.parametrize("transfer_syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_compressed_transfer_syntaxes_decode_to_the_same_volume(tmp_path: Path, transfer_syntax: str) -> None:
    """RLE Lossless, JPEG-LS Lossless, JPEG 2000 Lossless (decoded by pydicom / pylibjpeg / pyjpegls)."""
    values = ramp((3, 40, 40), seed=9)
    datasets = make_mr_series(values, slope=1.5, intercept=-3.0)
    for ds in datasets:
        ds.compress(transfer_syntax)
    volume = load(datasets, tmp_path)
    np.testing.assert_allclose(sitk.GetArrayFromImage(volume.image), values * 1.5 - 3.0)


def test_enhanced_multiframe_per_frame_rescale(tmp_path: Path) -> None:
    values = ramp((3, 5, 5), seed=6)
    multi = make_enhanced(make_mr_series(values))
    for frame in multi.PerFrameFunctionalGroupsSequence:
        z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        slope = {5.0: 1.0, 7.0: 2.0, 9.0: 4.0}[z]  # by slice position: frame order is the converter's
        item = Dataset()
        item.RescaleSlope, item.RescaleIntercept, item.RescaleType = slope, 10.0, "US"
        frame.PixelValueTransformationSequence = [item]
    if "PixelValueTransformationSequence" in multi.SharedFunctionalGroupsSequence[0]:
        del multi.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    volume = load([multi], tmp_path)
    expected = values * np.array([1.0, 2.0, 4.0])[:, None, None] + 10.0
    np.testing.assert_allclose(sitk.GetArrayFromImage(volume.image), expected)


def test_axial_series_tilted_beyond_the_limit_resampled_when_the_rule_allows(tmp_path: Path) -> None:
    k, r, col = np.indices((8, 12, 10))
    values = 100 + 3 * col + 2 * r + 5 * k  # linear: trilinear interpolation reproduces it exactly
    datasets = make_mr_series(values, orientation=tilted_axial(30.0), spacing=(1.0, 1.0, 1.5))
    write_datasets(datasets, tmp_path)
    volume = load_series_volume(next(iter(index_study(tmp_path).series.values())), resample_oblique=True)
    assert volume.resampled and volume.obliquity_deg == pytest.approx(30.0, abs=1e-3)
    image = volume.image
    assert image.GetDirection() == tuple(np.eye(3).ravel())
    assert image.GetSpacing() == pytest.approx((1.0, 1.0, 1.5))
    acquired = volume.acquired
    checked = 0
    for index in np.ndindex(*image.GetSize()):
        point = image.TransformIndexToPhysicalPoint(index)
        ijk = np.array(acquired.TransformPhysicalPointToContinuousIndex(point))
        if np.all(ijk >= 0) and np.all(ijk <= np.array(acquired.GetSize()) - 1):
            assert image[index] == pytest.approx(100 + 3 * ijk[0] + 2 * ijk[1] + 5 * ijk[2], abs=1e-3)
            checked += 1
    assert checked > 300
    assert all(len(uids) >= 1 for uids in volume.source_sop_uids)


def test_positions_rounded_to_two_decimals_still_form_a_volume(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((6, 4, 4)), spacing=(0.5, 0.5, 0.6), origin=(0.0, 0.0, 0.0))
    z = [0.0, 0.61, 1.2, 1.8, 2.39, 3.0]  # spacing 0.59 to 0.61 mm: 3 % of 0.6 mm, but rounding
    for k, ds in enumerate(datasets):
        ds.ImagePositionPatient = [0.01 * (k % 2), 0.0, z[k]]
    volume = load(datasets, tmp_path)
    assert volume.image.GetSpacing()[2] == pytest.approx(0.6, abs=1e-3)


def test_truncated_pixel_data_is_named(tmp_path: Path) -> None:
    datasets = make_mr_series(ramp((3, 16, 16)))
    paths = write_datasets(datasets, tmp_path)
    paths[1].write_bytes(paths[1].read_bytes()[:-100])
    with pytest.raises(VolumeError, match=f"^instance {datasets[1].SOPInstanceUID}: pixel data cannot be decoded"):
        load_series_volume(next(iter(index_study(tmp_path).series.values())))
