"""load_study end to end (issue 3 points 1-3) on phantom studies and small synthetic ones."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.errors import MaskError, VolumeError
from pipeline.phantom import PhantomStudy
from pipeline.load.study import LoadedStudy, SelectionRules, load_study
from tests.dicom_factory import (
    ball_contours,
    ball_mask,
    make_mr_series,
    make_rtstruct,
    make_seg,
    oblique_sagittal,
    ramp,
    source_points,
    tilted_axial,
    write_datasets,
)

GEOMETRIES = ("axial2d", "axial3d", "sagittal3d", "enhanced")


@pytest.fixture(scope="module")
def loaded(phantom_study: Callable[..., PhantomStudy]) -> Callable[..., tuple[PhantomStudy, LoadedStudy]]:
    """Factory: (geometry, mask_kind) -> (phantom truth, load_study result), cached per module."""
    cache: dict[tuple[str, str], tuple[PhantomStudy, LoadedStudy]] = {}

    def get(geometry: str, mask_kind: str) -> tuple[PhantomStudy, LoadedStudy]:
        if (geometry, mask_kind) not in cache:
            truth = phantom_study(geometry, mask_kind)
            cache[(geometry, mask_kind)] = (truth, load_study(truth.folder))
        return cache[(geometry, mask_kind)]

    return get


def lesion_centroid_mm(study: LoadedStudy) -> np.ndarray:
    """Centroid of the lesion voxels in LPS mm."""
    index = np.argwhere(sitk.GetArrayViewFromImage(study.lesion) > 0)[:, ::-1].mean(axis=0)
    return np.array(study.lesion.TransformContinuousIndexToPhysicalPoint(tuple(float(v) for v in index)))


@pytest.mark.parametrize("mask_kind", ["seg", "rtstruct"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_phantom_lesion_found_where_it_was_drawn(loaded, geometry: str, mask_kind: str) -> None:
    truth, study = loaded(geometry, mask_kind)
    assert (study.study_uid, study.series_uid, study.mask_sop_uid) == (
        truth.study_uid, truth.image_series_uid, truth.mask_sop_uid,
    )
    assert study.mask_kind == mask_kind.upper()
    image, lesion = study.image, study.lesion
    assert image.GetPixelID() == sitk.sitkFloat32 and lesion.GetPixelID() == sitk.sitkUInt8
    assert image.GetDirection() == tuple(np.eye(3).ravel())
    assert (lesion.GetSize(), lesion.GetOrigin(), lesion.GetSpacing()) == (
        image.GetSize(), image.GetOrigin(), image.GetSpacing(),
    )
    error = np.abs(lesion_centroid_mm(study) - np.array(truth.lesion_centroid_lps))
    assert np.all(error <= np.array(image.GetSpacing())), f"centroid off by {error} mm"
    volume_cm3 = float(sitk.GetArrayViewFromImage(lesion).sum()) * math.prod(image.GetSpacing()) / 1000.0
    assert volume_cm3 == pytest.approx(truth.lesion_volume_cm3, rel=0.15)
    assert (study.lesion_number, study.lesion_label) == (1, "Metastasis")
    # Provenance: each axial slice names the source images crossing it.
    assert len(study.source_sop_uids) == image.GetSize()[2]
    contributing = {uid for uids in study.source_sop_uids for uid in uids}
    assert contributing == set(truth.image_sop_uids)
    per_slice = {len(uids) for uids in study.source_sop_uids}
    expected = {truth.grid.size[2]} if truth.grid.plane == "sagittal" and geometry != "enhanced" else {1}
    assert per_slice == expected
    json.dumps(study.selection)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_seg_and_rtstruct_of_the_same_phantom_lesion_agree(loaded, geometry: str) -> None:
    (_, from_seg), (_, from_rt) = loaded(geometry, "seg"), loaded(geometry, "rtstruct")
    assert from_seg.image.GetSize() == from_rt.image.GetSize()
    a = sitk.GetArrayViewFromImage(from_seg.lesion) > 0
    b = sitk.GetArrayViewFromImage(from_rt.lesion) > 0
    dice = 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())
    assert dice >= 0.95, f"Dice {dice:.3f}"


@pytest.mark.parametrize("mask_kind", ["seg", "rtstruct"])
def test_brain_segment_and_satellite_are_told_apart(phantom_study, mask_kind: str) -> None:
    truth = phantom_study("axial2d", mask_kind, brain_segment=True, satellite=True, satellite_in_mask=True)
    assert truth.mask_labels == ("Metastasis", "Metastasis 2", "Brain")
    study = load_study(truth.folder)
    assert (study.lesion_number, study.lesion_label) == (1, "Metastasis")
    assert study.brain is not None
    brain = sitk.GetArrayViewFromImage(study.brain) > 0
    lesion = sitk.GetArrayViewFromImage(study.lesion) > 0
    assert brain.sum() > 100 * lesion.sum()
    assert lesion[brain].sum() == lesion.sum()  # the lesion lies inside the brain
    labels = {x["label"]: x["voxels"] for x in study.selection["lesion"]["labels"]}
    assert labels["Metastasis"] > labels["Metastasis 2"] > 0
    assert study.selection["lesion"]["lesion_rule"] == "lesion_label_pattern, then largest"
    # A rule naming the satellite picks it instead.
    other = load_study(truth.folder, SelectionRules(lesion_label_pattern=r"Metastasis 2"))
    assert (other.lesion_number, other.lesion_label) == (2, "Metastasis 2")


def _synthetic_study(folder: Path, *, tilt_deg: float = 0.0) -> list:
    source = make_mr_series(ramp((6, 16, 16)), origin=(-8.0, -8.0, 0.0), spacing=(1.0, 1.0, 2.0))
    for k, ds in enumerate(source):
        ds.ImagePositionPatient = [-8.0, -8.0 + k * 2.0 * math.tan(math.radians(tilt_deg)), k * 2.0]
    seg = make_seg(source, {"Lesion": ball_mask(source, (0.0, 0.0, 5.0), 3.5)})
    write_datasets([*source, seg], folder)
    return [*source, seg]


def test_synthetic_study_record(tmp_path: Path) -> None:
    datasets = _synthetic_study(tmp_path)
    study = load_study(tmp_path)
    record = json.loads(json.dumps(study.selection))
    assert record["series_instance_uid"] == datasets[0].SeriesInstanceUID
    assert record["mask_sop_instance_uid"] == datasets[-1].SOPInstanceUID
    assert record["rule"] == "only usable mask"
    assert record["volume"] == {
        "acquisition_plane": "axial", "grid": "orthogonal",
        "grid_rule": "axial acquisition along the patient axes: permuted/flipped, no interpolation",
        "tilt_deg": 0.0, "obliquity_deg": 0.0, "resampled_from_oblique": False, "acquired_slice_spacing_mm": 2.0,
        "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        "size": [16, 16, 6], "spacing_mm": [1.0, 1.0, 2.0], "origin_mm": [-8.0, -8.0, 0.0],
    }
    assert study.source_sop_uids == tuple((ds.SOPInstanceUID,) for ds in datasets[:6])
    assert study.brain is None
    np.testing.assert_array_equal(
        sitk.GetArrayFromImage(study.lesion), ball_mask(datasets[:6], (0.0, 0.0, 5.0), 3.5).astype(np.uint8)
    )


def test_load_study_reports_volume_and_mask_errors(tmp_path: Path) -> None:
    datasets = _synthetic_study(tmp_path / "tilted", tilt_deg=20.0)
    with pytest.raises(VolumeError, match=rf"series {datasets[0].SeriesInstanceUID}: .*gantry tilt or shear of about 20\.0 deg"):
        load_study(tmp_path / "tilted")
    _synthetic_study(tmp_path / "plain")
    with pytest.raises(MaskError, match="no non-empty lesion segment or ROI among: 1 'Lesion'"):
        load_study(tmp_path / "plain", SelectionRules(lesion_label_pattern="^$", exclude_label_pattern="Lesion"))


def _sphere_study(folder: Path, source: list, centre: tuple[float, float, float], radius: float) -> None:
    """Two sub-folders: ``seg`` (the series + a SEG of the ball) and ``rt`` (the series + an RTSTRUCT of it)."""
    seg = make_seg(source, {"Lesion": ball_mask(source, centre, radius)})
    structure_set = make_rtstruct(source, {"GTV": ball_contours(source, centre, radius)})
    write_datasets([*source, seg], folder / "seg")
    write_datasets([*source, structure_set], folder / "rt")


def _dice(a: sitk.Image, b: sitk.Image) -> float:
    x, y = sitk.GetArrayViewFromImage(a) > 0, sitk.GetArrayViewFromImage(b) > 0
    return 2.0 * float((x & y).sum()) / float(x.sum() + y.sum())


def _error_along_axes(study: LoadedStudy, centre: tuple[float, float, float]) -> np.ndarray:
    """|centroid - centre| (mm) resolved along the image's own i, j, k axes."""
    direction = np.array(study.image.GetDirection()).reshape(3, 3)
    return np.abs((lesion_centroid_mm(study) - np.array(centre)) @ direction)


def test_axial_2d_study_tilted_5_deg_keeps_acquired_slices_and_both_masks_land_on_them(tmp_path: Path) -> None:
    values = ramp((8, 40, 36), seed=21)
    source = make_mr_series(values, orientation=tilted_axial(5.0), spacing=(1.0, 1.0, 5.0), origin=(-18.0, -20.0, -17.5))
    # Far from the grid origin (rows 30+): a tilted grid read as if axial puts it 2.9 mm too low.
    centre, radius = (3.3, 12.4, 1.2), 8.0
    _sphere_study(tmp_path, source, centre, radius)
    from_seg, from_rt = load_study(tmp_path / "seg"), load_study(tmp_path / "rt")
    record = from_seg.selection["volume"]
    assert (record["grid"], record["resampled_from_oblique"]) == ("acquired_tilted", False)
    assert record["tilt_deg"] == pytest.approx(5.0, abs=1e-3) and record["obliquity_deg"] == pytest.approx(5.0, abs=1e-3)
    assert record["direction"] == pytest.approx(list(from_seg.image.GetDirection()), abs=1e-6)
    assert from_seg.selection["rules"]["max_axial_tilt_degrees"] == 25.0
    for study in (from_seg, from_rt):
        # The voxels are the acquired pixels; slice k is acquired slice k.
        np.testing.assert_array_equal(sitk.GetArrayFromImage(study.image), values.astype(np.float32))
        assert study.source_sop_uids == tuple((ds.SOPInstanceUID,) for ds in source)
        assert (study.lesion.GetOrigin(), study.lesion.GetDirection()) == (study.image.GetOrigin(), study.image.GetDirection())
        error = _error_along_axes(study, centre)
        assert np.all(error <= np.array(study.image.GetSpacing())), error
    # The SEG is voxel-exact: its frames were placed by position on the tilted slices.
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_seg.lesion), ball_mask(source, centre, radius).astype(np.uint8))
    assert from_seg.selection["lesion"]["segments"][0]["resampled"] is False
    assert from_rt.selection["lesion"]["rois"][0]["max_off_plane_mm"] == pytest.approx(0.0, abs=1e-3)
    assert _dice(from_seg.lesion, from_rt.lesion) >= 0.95
    # Where the lesion voxels are in patient mm: within the sphere (voxel centres), none outside.
    points, _ = source_points(source)
    inside = np.linalg.norm(points - np.array(centre), axis=-1) < radius
    got = sitk.GetArrayViewFromImage(from_rt.lesion) > 0
    assert float((got & inside).sum()) / float(got.sum()) >= 0.95
    # Read as if the direction were the identity, the centroid would be off by millimetres along z.
    index = np.argwhere(sitk.GetArrayViewFromImage(from_seg.lesion) > 0)[:, ::-1].mean(axis=0)
    naive = np.array(from_seg.image.GetOrigin()) + index * np.array(from_seg.image.GetSpacing())
    assert abs(naive[2] - lesion_centroid_mm(from_seg)[2]) > 2.0


def test_oblique_study_tilted_beyond_the_limit_is_resampled_when_thin_sliced(tmp_path: Path) -> None:
    source = make_mr_series(ramp((14, 24, 24)), orientation=tilted_axial(15.0),
                            origin=(-12.0, -12.0, -6.0), spacing=(1.0, 1.0, 1.0))
    centre, radius = (0.5, 0.2, 1.0), 4.5
    _sphere_study(tmp_path, source, centre, radius)
    # Default: a 15 deg tilt is near-axial, the acquired slices are kept.
    native = load_study(tmp_path / "seg")
    assert native.selection["volume"]["grid"] == "acquired_tilted"
    assert np.all(_error_along_axes(native, centre) <= 0.5)
    # With a 10 deg limit it is not; 1 mm slices are resampled by default ...
    rules = SelectionRules(max_axial_tilt_degrees=10.0)
    from_seg, from_rt = load_study(tmp_path / "seg", rules), load_study(tmp_path / "rt", rules)
    assert from_seg.selection["volume"]["resampled_from_oblique"] is True
    assert from_seg.selection["volume"]["grid"] == "resampled"
    assert from_seg.selection["volume"]["obliquity_deg"] == pytest.approx(15.0, abs=1e-3)
    for study in (from_seg, from_rt):
        assert study.image.GetDirection() == tuple(np.eye(3).ravel())
        error = np.abs(lesion_centroid_mm(study) - np.array(centre))
        assert np.all(error <= 0.5), error
    assert _dice(from_seg.lesion, from_rt.lesion) >= 0.95
    volume_mm3 = 4.0 / 3.0 * math.pi * radius**3
    assert float((sitk.GetArrayViewFromImage(from_seg.lesion) > 0).sum()) == pytest.approx(volume_mm3, rel=0.05)
    # ... unless resampling is off.
    with pytest.raises(VolumeError, match=r"slice normal 15\.0 deg from the S axis, more than max_axial_tilt_degrees=10; "
                                          r"resampling onto an axial grid is off \(rule resample_oblique=false\)"):
        load_study(tmp_path / "seg", SelectionRules(max_axial_tilt_degrees=10.0, resample_oblique=False))


def test_oblique_sagittal_studies_resampled_when_1mm_and_refused_when_5mm(tmp_path: Path) -> None:
    centre, radius = (1.0, 0.5, -0.5), 5.0
    thin = make_mr_series(ramp((16, 20, 20)), orientation=oblique_sagittal(8.0), spacing=(1.0, 1.0, 1.0),
                          origin=(8.0, -10.0, 10.0))
    _sphere_study(tmp_path / "thin", thin, centre, radius)
    from_seg, from_rt = load_study(tmp_path / "thin" / "seg"), load_study(tmp_path / "thin" / "rt")
    assert from_seg.selection["volume"]["grid"] == "resampled"
    assert from_seg.selection["volume"]["acquisition_plane"] == "sagittal"
    assert from_seg.selection["volume"]["tilt_deg"] == pytest.approx(8.0, abs=1e-3)
    for study in (from_seg, from_rt):
        assert np.all(np.abs(lesion_centroid_mm(study) - np.array(centre)) <= 0.5)
    assert _dice(from_seg.lesion, from_rt.lesion) >= 0.95
    thick = make_mr_series(ramp((4, 20, 20)), orientation=oblique_sagittal(8.0), spacing=(1.0, 1.0, 5.0),
                           origin=(8.0, -10.0, 10.0))
    _sphere_study(tmp_path / "thick", thick, centre, radius)
    with pytest.raises(VolumeError, match=rf"^series {thick[0].SeriesInstanceUID}: oblique sagittal acquisition, slice "
                                          r"normal 8\.0 deg from the L axis, not near-axial .* its slices are 5\.00 mm "
                                          r"apart, more than max_resample_slice_mm=1\.5: resampling onto an axial grid "
                                          r"would blend acquired slices"):
        load_study(tmp_path / "thick" / "rt")
