"""SEG and RTSTRUCT to a lesion mask on the MR grid (issue 3 point 3)."""

from __future__ import annotations

import math
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset

from pipeline.errors import MaskError
from pipeline.load.masks import fill_polygon, load_rtstruct_mask, load_seg_mask, rasterize_contours
from pipeline.load.select import SelectionRules
from tests.dicom_factory import (
    SAGITTAL,
    ball_contours,
    ball_mask,
    load,
    make_mr_series,
    make_rtstruct,
    make_seg,
    ramp,
    tilted_axial,
)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def _write(ds: Dataset, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture()
def axial(tmp_path: Path):
    """An axial 1 x 1 x 2 mm series of 10 slices 24 x 24, its volume, a lesion and a brain."""
    source = make_mr_series(ramp((10, 24, 24)), origin=(-12.0, -12.0, 0.0))
    volume = load(source, tmp_path / "mr")
    lesion = ball_mask(source, (2.3, -1.4, 9.1), 5.0)
    brain = ball_mask(source, (0.0, 0.0, 9.0), 11.0)
    return source, volume, lesion, brain


def test_seg_binary_is_voxel_exact_and_picks_labels(tmp_path: Path, axial) -> None:
    source, volume, lesion, brain = axial
    path = _write(make_seg(source, {"Brain": brain, "Edema": brain & ~lesion, "Metastasis": lesion}), tmp_path)
    mask = load_seg_mask(path, volume.image, SelectionRules())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask.lesion), lesion.astype(np.uint8))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask.brain), brain.astype(np.uint8))
    assert (mask.lesion_number, mask.lesion_label) == (3, "Metastasis")
    assert mask.record["lesion_rule"] == "lesion_label_pattern, then largest"
    assert mask.record["brain_number"] == 1
    assert [s["resampled"] for s in mask.record["segments"]] == [False, False, False]
    assert mask.lesion.GetOrigin() == volume.image.GetOrigin()
    assert sitk.GetArrayViewFromImage(mask.lesion).dtype == np.uint8


def test_seg_fractional_is_thresholded_at_half(tmp_path: Path, axial) -> None:
    source, volume, lesion, _ = axial
    fractions = np.where(lesion, 0.8, 0.0)
    fractions[5, 0, 0], fractions[5, 0, 1] = 0.3, 0.6  # below and above the threshold
    path = _write(make_seg(source, {"Tumour": fractions}, fractional=True), tmp_path)
    mask = load_seg_mask(path, volume.image, SelectionRules())
    expected = lesion.copy()
    expected[5, 0, 1] = True
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask.lesion), expected.astype(np.uint8))
    assert mask.record["segmentation_type"] == "FRACTIONAL"


def test_unlabelled_segments_fall_back_to_the_largest(tmp_path: Path, axial) -> None:
    source, volume, lesion, _ = axial
    small = ball_mask(source, (-7.0, -7.0, 4.0), 2.5)
    path = _write(make_seg(source, {"Segment 1": small, "Segment 2": lesion}), tmp_path)
    mask = load_seg_mask(path, volume.image, SelectionRules())
    assert mask.lesion_number == 2
    assert mask.record["lesion_rule"].startswith("largest")
    assert [x["voxels"] for x in mask.record["labels"]] == [int(small.sum()), int(lesion.sum())]
    # A configured pattern wins over size.
    mask = load_seg_mask(path, volume.image, SelectionRules(lesion_label_pattern=r"Segment 1$"))
    assert mask.lesion_number == 1


def test_empty_lesion_is_a_mask_error(tmp_path: Path, axial) -> None:
    source, volume, lesion, brain = axial
    seg = make_seg(source, {"Brain": brain, "Lesion": lesion})
    path = _write(seg, tmp_path)
    rules = SelectionRules(lesion_label_pattern="nothing-matches", lesion_fallback_largest=False)
    with pytest.raises(MaskError, match=rf"mask {seg.SOPInstanceUID}: no non-empty lesion segment or ROI among: 1 'Brain'"):
        load_seg_mask(path, volume.image, rules)


def test_seg_on_another_grid_is_resampled_and_recorded(tmp_path: Path, axial) -> None:
    source, volume, _, _ = axial
    # A 2 x 2 x 4 mm series in the same frame of reference, offset by half a voxel.
    coarse = make_mr_series(
        ramp((5, 12, 12)), spacing=(2.0, 2.0, 4.0), origin=(-11.5, -11.5, 0.0),
        study_uid=str(source[0].StudyInstanceUID), frame_of_reference_uid=str(source[0].FrameOfReferenceUID),
    )
    centre, radius = (2.3, -1.4, 9.1), 5.0
    path = _write(make_seg(coarse, {"Lesion": ball_mask(coarse, centre, radius)}), tmp_path)
    mask = load_seg_mask(path, volume.image, SelectionRules())
    assert mask.record["segments"][0]["resampled"] is True
    fine = ball_mask(source, centre, radius)
    assert dice(sitk.GetArrayFromImage(mask.lesion) > 0, fine) > 0.7


def test_rtstruct_matches_seg_of_the_same_ball(tmp_path: Path, axial) -> None:
    source, volume, lesion, _ = axial
    structure_set = make_rtstruct(source, {"GTV": ball_contours(source, (2.3, -1.4, 9.1), 5.0)})
    mask = load_rtstruct_mask(structure_set, volume.image, SelectionRules())
    got = sitk.GetArrayFromImage(mask.lesion) > 0
    assert dice(got, lesion) >= 0.95
    assert (mask.lesion_number, mask.lesion_label) == (1, "GTV")
    assert mask.record["rois"][0]["max_off_plane_mm"] == pytest.approx(0.0, abs=1e-3)


def test_rtstruct_inner_contour_cuts_a_hole(axial) -> None:
    _, volume, _, _ = axial
    z = 8.0  # slice k = 4
    angles = np.linspace(0, 2 * np.pi, 200, endpoint=False)[:, None]
    outer = np.hstack([6.2 * np.cos(angles), 6.2 * np.sin(angles), np.full_like(angles, z)])
    inner = np.hstack([2.7 * np.cos(angles), 2.7 * np.sin(angles), np.full_like(angles, z)])
    array, off_plane = rasterize_contours([outer, inner], volume.image)
    assert off_plane == pytest.approx(0.0, abs=1e-6)
    ys, xs = np.mgrid[0:24, 0:24]
    radius = np.hypot(xs - 12.0, ys - 12.0)  # voxel centre (12, 12) is the patient origin
    expected = (radius < 6.2) & (radius >= 2.7)
    np.testing.assert_array_equal(array[4] > 0, expected)
    assert array[4, 12, 12] == 0  # the hole
    assert array.sum() == expected.sum()  # nothing on the other slices


def test_rtstruct_on_sagittal_series_is_filled_in_the_sagittal_planes(tmp_path: Path) -> None:
    source = make_mr_series(ramp((12, 20, 20)), orientation=SAGITTAL, spacing=(1.0, 1.0, 1.5), origin=(9.0, -10.0, 10.0))
    volume = load(source, tmp_path / "mr")
    centre, radius = (0.4, 0.3, 0.2), 5.5
    structure_set = make_rtstruct(source, {"Lesion": ball_contours(source, centre, radius)})
    mask = load_rtstruct_mask(structure_set, volume.image, SelectionRules())
    image = volume.image
    expected = np.zeros(image.GetSize()[::-1], bool)
    z, y, x = np.indices(expected.shape)
    points = np.stack([x, y, z], -1) * np.array(image.GetSpacing()) + np.array(image.GetOrigin())
    expected = np.linalg.norm(points - np.array(centre), axis=-1) < radius
    got = sitk.GetArrayFromImage(mask.lesion) > 0
    assert dice(got, expected) >= 0.95
    # Each filled sagittal plane is one x index of the axial grid.
    assert set(np.nonzero(got.any(axis=(0, 1)))[0]) == set(np.nonzero(expected.any(axis=(0, 1)))[0])


def test_seg_and_rtstruct_agree_on_a_sagittal_series(tmp_path: Path) -> None:
    source = make_mr_series(ramp((12, 20, 20)), orientation=SAGITTAL, spacing=(1.0, 1.0, 1.5), origin=(9.0, -10.0, 10.0))
    volume = load(source, tmp_path / "mr")
    centre, radius = (0.4, 0.3, 0.2), 5.5
    seg_path = _write(make_seg(source, {"Lesion": ball_mask(source, centre, radius)}), tmp_path)
    from_seg = load_seg_mask(seg_path, volume.image, SelectionRules())
    from_rt = load_rtstruct_mask(make_rtstruct(source, {"Lesion": ball_contours(source, centre, radius)}), volume.image, SelectionRules())
    a, b = sitk.GetArrayFromImage(from_seg.lesion) > 0, sitk.GetArrayFromImage(from_rt.lesion) > 0
    assert from_seg.record["segments"][0]["resampled"] is False
    assert a.sum() > 300
    assert dice(a, b) >= 0.95


def test_fill_polygon_concave_and_self_intersecting() -> None:
    # An L shape: centres with 0 <= a < 4 and 0 <= b < 2, plus 0 <= a < 2 and 2 <= b < 5.
    a = np.array([-0.5, 3.5, 3.5, 1.5, 1.5, -0.5])
    b = np.array([-0.5, -0.5, 1.5, 1.5, 4.5, 4.5])
    got = fill_polygon(a, b, (6, 6))
    expected = np.zeros((6, 6), bool)
    expected[0:4, 0:2] = True
    expected[0:2, 2:5] = True
    np.testing.assert_array_equal(got, expected)
    # A bow tie: the two triangles are inside, nothing outside them.
    bow = fill_polygon(np.array([0.2, 8.8, 8.8, 0.2]), np.array([0.2, 8.8, 0.2, 8.8]), (10, 10))
    assert bow[1, 4] and bow[8, 4] and not bow[4, 1] and not bow[4, 8]
    assert bow.sum() == bow.T.sum()
    # Vertices exactly on voxel centres are counted once (half-open scanlines).
    square = fill_polygon(np.array([0.0, 3.0, 3.0, 0.0]), np.array([0.0, 0.0, 3.0, 3.0]), (5, 5))
    assert square.sum() == 9


def test_empty_lesion_segment_and_contours_off_the_image(tmp_path: Path, axial) -> None:
    source, volume, lesion, _ = axial
    seg = make_seg(source, {"Lesion": np.zeros_like(lesion)})
    with pytest.raises(MaskError) as err:
        load_seg_mask(_write(seg, tmp_path), volume.image, SelectionRules())
    assert str(err.value) == f"mask {seg.SOPInstanceUID}: no non-empty lesion segment or ROI among: 1 'Lesion' (0 voxels)"
    # Contours drawn 100 mm above the last slice land on no voxel.
    structure_set = make_rtstruct(source, {"GTV": ball_contours(source, (0.0, 0.0, 9.0), 4.0)})
    for roi in structure_set.ROIContourSequence:
        for contour in roi.ContourSequence:
            points = np.asarray(contour.ContourData, float).reshape(-1, 3) + [0.0, 0.0, 100.0]
            contour.ContourData = [float(v) for v in points.ravel()]
    with pytest.raises(MaskError, match=r"no non-empty lesion segment or ROI among: 1 'GTV' \(0 voxels\)"):
        load_rtstruct_mask(structure_set, volume.image, SelectionRules())


def test_single_frame_seg_lands_on_one_thin_slice(tmp_path: Path) -> None:
    source = make_mr_series(ramp((8, 12, 12)), origin=(-6.0, -6.0, 0.0), spacing=(1.0, 1.0, 0.4))
    volume = load(source, tmp_path / "mr")
    lesion = np.zeros((8, 12, 12), bool)
    lesion[3, 4:7, 4:8] = True
    seg = make_seg(source, {"Lesion": lesion})
    for item in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence:  # as some writers do
        del item.SpacingBetweenSlices
    mask = load_seg_mask(_write(seg, tmp_path), volume.image, SelectionRules())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(mask.lesion), lesion.astype(np.uint8))
    assert mask.record["segments"][0]["resampled"] is False


def test_unreadable_seg_is_named_by_uid(tmp_path: Path, axial, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    """The error names the SEG and the exception type; the library's message (it can quote
    dataset content) goes to the DEBUG log only."""
    source, volume, lesion, _ = axial
    seg = make_seg(source, {"Lesion": lesion})
    path = _write(seg, tmp_path)

    def quoting_segread(*args, **kwargs):
        raise ValueError("Patient's Name 'DOE^JANE' is not valid")

    monkeypatch.setattr(hd.seg, "segread", quoting_segread)
    with caplog.at_level("DEBUG", logger="pipeline.load.masks"), pytest.raises(MaskError) as err:
        load_seg_mask(path, volume.image, SelectionRules(), sop_uid=str(seg.SOPInstanceUID))
    assert str(err.value) == f"SEG {seg.SOPInstanceUID}: cannot be read by highdicom (ValueError)"
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert [r.levelname for r in caplog.records if "DOE^JANE" in r.getMessage()] == ["DEBUG"]
    monkeypatch.undo()
    path.write_bytes(path.read_bytes()[:1500])  # a truncated file
    with pytest.raises(MaskError, match=rf"^SEG {seg.SOPInstanceUID}: cannot be read by highdicom \(\w+\)$"):
        load_seg_mask(path, volume.image, SelectionRules(), sop_uid=str(seg.SOPInstanceUID))


def test_brain_metastasis_label_is_the_lesion_not_the_brain(tmp_path: Path, axial) -> None:
    source, volume, lesion, brain = axial
    path = _write(make_seg(source, {"Whole brain": brain, "Brain metastasis": lesion}), tmp_path)
    mask = load_seg_mask(path, volume.image, SelectionRules())
    assert (mask.lesion_number, mask.lesion_label, mask.record["brain_number"]) == (2, "Brain metastasis", 1)


def test_edema_and_necrosis_labels_are_not_the_lesion(tmp_path: Path, axial) -> None:
    source, volume, lesion, brain = axial
    core = ball_mask(source, (2.3, -1.4, 9.1), 2.0)
    segments = {"Peritumoral edema": brain & ~lesion, "Necrotic tumor core": core, "Enhancing tumor": lesion & ~core}
    mask = load_seg_mask(_write(make_seg(source, segments), tmp_path), volume.image, SelectionRules())
    assert (mask.lesion_number, mask.lesion_label) == (3, "Enhancing tumor")


def test_seg_and_rtstruct_on_a_tilted_axial_grid_land_on_the_acquired_slices(tmp_path: Path) -> None:
    source = make_mr_series(ramp((8, 30, 30)), orientation=tilted_axial(5.0), spacing=(1.0, 1.0, 3.0),
                            origin=(-15.0, -15.0, -10.0))
    volume = load(source, tmp_path / "mr")
    assert volume.grid == "acquired_tilted"
    centre, radius = (-2.0, 8.5, 1.5), 6.0
    expected = ball_mask(source, centre, radius)
    from_seg = load_seg_mask(_write(make_seg(source, {"Lesion": expected}), tmp_path), volume.image, SelectionRules())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_seg.lesion), expected.astype(np.uint8))
    assert from_seg.record["segments"][0]["resampled"] is False
    from_rt = load_rtstruct_mask(make_rtstruct(source, {"GTV": ball_contours(source, centre, radius)}),
                                 volume.image, SelectionRules())
    got = sitk.GetArrayFromImage(from_rt.lesion) > 0
    assert dice(got, expected) >= 0.95
    assert from_rt.record["rois"][0]["max_off_plane_mm"] == pytest.approx(0.0, abs=1e-3)
    # Centroid of the filled voxels, mapped through the tilted direction, is the ball's centre.
    index = np.argwhere(got)[:, ::-1].mean(axis=0)
    centroid = np.array(volume.image.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in index)))
    direction = np.array(volume.image.GetDirection()).reshape(3, 3)
    assert np.all(np.abs((centroid - np.array(centre)) @ direction) <= np.array(volume.image.GetSpacing()))


def test_contours_drawn_in_true_axial_planes_on_a_tilted_grid(tmp_path: Path) -> None:
    source = make_mr_series(ramp((8, 30, 30)), orientation=tilted_axial(5.0), spacing=(1.0, 1.0, 2.0),
                            origin=(-15.0, -15.0, -8.0))
    volume = load(source, tmp_path / "mr")
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)[:, None]

    def axial_circle(r: float) -> np.ndarray:  # in the plane z = 0, not in a slice plane of the grid
        return np.hstack([r * np.cos(angles), r * np.sin(angles), np.zeros_like(angles)])

    # Small: within half a slice of the nearest acquired slice; filled there, the distance recorded.
    mask = load_rtstruct_mask(make_rtstruct(source, {"GTV": [axial_circle(3.0)]}), volume.image, SelectionRules())
    # (0, 0, 0) is 6.66 mm along the normal from the grid origin: slice k = 3 at 6 mm, 0.66 mm
    # away, and the circle leaves the axial plane by 3 mm * sin(5 deg) = 0.26 mm either side.
    distance = -15.0 * math.sin(math.radians(5.0)) + 8.0 * math.cos(math.radians(5.0))
    expected = (distance - 6.0) + 3.0 * math.sin(math.radians(5.0))
    assert mask.record["rois"][0]["max_off_plane_mm"] == pytest.approx(expected, abs=1e-3)
    assert expected == pytest.approx(0.924, abs=1e-3)
    assert int(np.count_nonzero(sitk.GetArrayViewFromImage(mask.lesion).any(axis=(1, 2)))) == 1
    # Large: spans more than half a slice across the tilted planes.
    structure_set = make_rtstruct(source, {"GTV": [axial_circle(10.0)]})
    with pytest.raises(MaskError) as err:
        load_rtstruct_mask(structure_set, volume.image, SelectionRules())
    assert str(err.value) == (
        f"RTSTRUCT {structure_set.SOPInstanceUID} ROI 1: contour is not in a plane of the image grid: its points "
        "span 0.87 voxels (1.74 mm) across the nearest grid plane, more than 0.5 (drawn on an oblique reformat?)"
    )
