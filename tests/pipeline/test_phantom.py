"""The phantom generator writes valid DICOM whose masks and pixels match its ground truth."""

from __future__ import annotations

import csv
import functools
import hashlib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as PolygonPath

from pipeline.phantom import GEOMETRIES, MASK_KINDS, PhantomStudy, generate_study
from pipeline.phantom.anatomy import head_model
from pipeline.phantom.cli import main
from pipeline.phantom.lesion import sample_lesion
from tests.conftest import require_tool



def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm"))


def _digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in _files(folder)}


def _dciodvfy(path: Path) -> tuple[Path, str]:
    result = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True, timeout=60)
    return path, result.stdout + result.stderr


def _dciodvfy_errors(paths: list[Path]) -> tuple[list[str], list[str]]:
    """Error lines and warning lines dciodvfy -new reports for the files."""
    errors, warnings = [], []
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = list(pool.map(_dciodvfy, paths))
    for path, report in reports:
        for line in report.splitlines():
            if line.startswith("Error"):
                errors.append(f"{path.name}: {line}")
            elif line.startswith("Warning"):
                warnings.append(line)
    return errors, warnings


def _image_datasets(study: PhantomStudy) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in _files(study.folder) if p.parent.name.startswith("MR")]


def _mask_path(study: PhantomStudy) -> Path:
    return next(p for p in _files(study.folder) if p.parent.name in ("SEG", "RTSTRUCT"))


@functools.lru_cache(maxsize=32)
def _read_mask(path: Path) -> pydicom.Dataset:
    """The mask object (SEG through highdicom), read once per test session."""
    return hd.seg.segread(path) if path.parent.name == "SEG" else pydicom.dcmread(path)


def _seg_points(study: PhantomStudy, segment: int = 1) -> np.ndarray:
    """Patient coordinates (N, 3) of the voxels of a SEG segment, from the file's own geometry."""
    seg = _read_mask(_mask_path(study))
    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    row_spacing, column_spacing = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    pixels = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    points = []
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        identification = frame if "SegmentIdentificationSequence" in frame else shared
        if identification.SegmentIdentificationSequence[0].ReferencedSegmentNumber != segment:
            continue
        origin = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        rows, columns = np.nonzero(pixels[index])
        points.append(origin + np.outer(columns * column_spacing, orientation[:3])
                      + np.outer(rows * row_spacing, orientation[3:]))
    return np.concatenate(points)


def _rtstruct_mask(study: PhantomStudy, roi: int = 1) -> np.ndarray:
    """The ROI's contours rasterised (even-odd) on the acquisition grid, [k, j, i] uint8."""
    ds = _read_mask(_mask_path(study))
    grid = study.grid
    mask = np.zeros(grid.size[::-1], dtype=np.uint8)
    jj, ii = np.mgrid[0 : grid.size[1], 0 : grid.size[0]]
    centres = np.column_stack([ii.ravel(), jj.ravel()])
    item = next(r for r in ds.ROIContourSequence if r.ReferencedROINumber == roi)
    for contour in item.ContourSequence:
        index = grid.lps_to_index(np.array(contour.ContourData, dtype=float).reshape(-1, 3))
        k = int(round(index[0, 2]))
        assert np.allclose(index[:, 2], k, atol=1e-3), "contour does not lie on an image plane"
        referenced = contour.ContourImageSequence[0]
        if study.geometry == "enhanced":
            assert referenced.ReferencedFrameNumber == k + 1
        else:
            assert referenced.ReferencedSOPInstanceUID == study.image_sop_uids[k]
        inside = PolygonPath(index[:, :2]).contains_points(centres).reshape(grid.size[1], grid.size[0])
        mask[k] ^= inside.astype(np.uint8)
    return mask


def _seg_mask(study: PhantomStudy, segment: int = 1) -> np.ndarray:
    grid = study.grid
    mask = np.zeros(grid.size[::-1], dtype=np.uint8)
    index = np.rint(grid.lps_to_index(_seg_points(study, segment))).astype(int)
    mask[index[:, 2], index[:, 1], index[:, 0]] = 1
    return mask


def _check_centroid(study: PhantomStudy, points: np.ndarray) -> None:
    offset = study.grid.lps_to_index(points.mean(axis=0)[None])[0] - study.grid.lps_to_index(
        np.array([study.lesion_centroid_lps]))[0]
    assert np.all(np.abs(offset) <= 1.0), f"mask centroid {offset} voxels from the true centroid"


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_every_file_is_valid_dicom_that_reads_back(phantom_study, geometry: str) -> None:
    seg, rtstruct = phantom_study(geometry, "seg"), phantom_study(geometry, "rtstruct")
    image_folder = next(p.parent for p in _files(seg.folder) if p.parent.name.startswith("MR"))
    rt_image_folder = rtstruct.folder / image_folder.name
    assert _digests(image_folder) == _digests(rt_image_folder)  # one image series, two mask kinds
    paths = [*_files(image_folder), _mask_path(seg), _mask_path(rtstruct)]
    errors, warnings = _dciodvfy_errors(paths)
    assert errors == []
    # The only warnings: RescaleSlope/Intercept on some single-frame MR series (not in the MR
    # Image IOD; Philips sends them, so loaders must apply them).
    assert all("Rescale" in line for line in warnings), warnings[:5]

    images = _image_datasets(seg)
    assert {ds.SeriesInstanceUID for ds in images} == {seg.image_series_uid}
    assert all(ds.PatientName == "PHANTOM^P0000" and ds.PatientID == "PHANTOM-0000" for ds in images)
    assert str(pydicom.dcmread(_mask_path(seg)).SOPInstanceUID) == seg.mask_sop_uid
    if geometry == "enhanced":
        assert len(images) == 1 and images[0].SOPClassUID == pydicom.uid.EnhancedMRImageStorage
        image = hd.imread(image_folder / "IM0001.dcm")
        assert image.pixel_array.shape == (seg.grid.size[2], seg.grid.size[1], seg.grid.size[0])
        assert int(image.NumberOfFrames) == seg.grid.size[2]
    else:
        assert len(images) == seg.grid.size[2]
        by_uid = {ds.SOPInstanceUID: ds for ds in images}
        for k, uid in enumerate(seg.image_sop_uids):
            position = np.array(by_uid[uid].ImagePositionPatient, dtype=float)
            assert np.allclose(position, seg.grid.slice_position(k), atol=1e-4)
            assert by_uid[uid].pixel_array.shape == (seg.grid.size[1], seg.grid.size[0])
    segmentation = hd.seg.segread(_mask_path(seg))
    assert segmentation.SegmentSequence[0].SegmentLabel == "Metastasis"
    assert segmentation.SegmentSequence[0].TrackingUID


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_mask_centroid_and_volume_match_the_ground_truth(phantom_study, geometry: str, mask_kind: str) -> None:
    study = phantom_study(geometry, mask_kind)
    mask = _seg_mask(study) if mask_kind == "seg" else _rtstruct_mask(study)
    k, j, i = np.nonzero(mask)
    points = study.grid.index_to_lps(np.column_stack([i, j, k]))
    _check_centroid(study, points)
    voxel_cm3 = float(np.prod(study.grid.spacing)) / 1000.0
    tolerance = 0.15 if study.grid.spacing[2] <= 1.0 else 0.45  # 5 mm slices sample a 1 cm lesion coarsely
    assert mask.sum() * voxel_cm3 == pytest.approx(study.lesion_volume_cm3, rel=tolerance)
    assert 0.4 <= study.lesion_volume_cm3 <= 3.3


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_seg_and_rtstruct_of_one_lesion_agree(phantom_study, geometry: str) -> None:
    seg = _seg_mask(phantom_study(geometry, "seg"))
    rtstruct = _rtstruct_mask(phantom_study(geometry, "rtstruct"))
    dice = 2.0 * np.logical_and(seg, rtstruct).sum() / (seg.sum() + rtstruct.sum())
    assert dice >= 0.97


def test_recorded_bias_field_is_the_one_applied(phantom_study) -> None:
    biased = phantom_study("axial2d", "seg", brain_segment=True)
    flat = phantom_study("axial2d", "seg", brain_segment=True, apply_bias_field=False)
    assert flat.image_series_uid == biased.image_series_uid  # same study, only the field differs

    def volume(study: PhantomStudy) -> np.ndarray:
        by_uid = {ds.SOPInstanceUID: ds for ds in _image_datasets(study)}
        return np.stack([by_uid[uid].pixel_array for uid in study.image_sop_uids]).astype(np.float64)

    field = sitk.GetArrayFromImage(biased.bias_field.on_image(biased.grid.reference()))
    brain = _seg_mask(biased, segment=2).astype(bool)
    with_field, without = volume(biased)[brain], volume(flat)[brain]
    bright = without > np.percentile(without, 25)  # Rician noise is not multiplicative in dark voxels
    ratio = with_field[bright] / without[bright] / field[brain][bright]
    assert 1.25 < field[brain].max() / field[brain].min() < 2.5
    assert np.median(ratio) == pytest.approx(1.0, abs=0.01)
    assert np.percentile(ratio, 90) - np.percentile(ratio, 10) < 0.15
    assert np.all(flat.bias_field.evaluate(np.zeros((1, 3))) == 1.0)


def _mid_slice_statistics(effect_size: float, positive: bool, seeds: range) -> np.ndarray:
    """Necrotic and bright-rim area fractions in the mid-lesion axial plane of lesions drawn with these seeds."""
    head = head_model()
    background = sitk.GetArrayFromImage(head.t1c)
    axis = np.arange(-20.0, 20.0, 0.8)
    x, y = np.meshgrid(axis, axis)
    plane = np.column_stack([x.ravel(), y.ravel(), np.zeros(x.size)])
    values = []
    for seed in seeds:
        lesion = sample_lesion(head, np.random.default_rng([seed, 11]), egfr_positive=positive,
                               effect_size=effect_size)
        q = lesion.centre + plane
        image = lesion.render(q, head.sample(background, q), head.sample(head.wm, q))
        inside = image[lesion.inside(q)]
        values.append([np.mean(inside < 0.7), np.mean(inside > 1.4)])
    return np.array(values)


def _auc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    difference = positives[:, None] - negatives[None, :]
    return float(np.mean(difference > 0) + 0.5 * np.mean(difference == 0))


def test_egfr_effect_is_measurable_and_vanishes_at_effect_size_zero() -> None:
    seeds = range(30)
    negative = _mid_slice_statistics(0.6, False, seeds)
    positive = _mid_slice_statistics(0.6, True, seeds)
    # Measured 0.16 and 0.27 at the default 0.6 (one feature each; the model sees them all).
    assert _auc(negative[:, 0], positive[:, 0]) < 0.25  # positives: smaller necrotic core
    assert _auc(negative[:, 1], positive[:, 1]) < 0.35  # positives: thinner enhancing rim
    null_negative = _mid_slice_statistics(0.0, False, seeds)
    null_positive = _mid_slice_statistics(0.0, True, seeds)
    assert np.array_equal(null_negative, null_positive)  # same draws, same lesions: no signal at all


def test_cli_writes_a_labelled_reproducible_cohort(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cohort"
    assert main([str(out), "--patients", "3", "--positive-fraction", "0.34", "--seed", "5",
                 "--geometry", "axial2d", "--mask", "mixed", "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "[1/3] PHANTOM-0001" in printed and "[3/3] PHANTOM-0003" in printed
    with open(out / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["patient_id"] for r in rows] == ["PHANTOM-0001", "PHANTOM-0002", "PHANTOM-0003"]
    assert sum(r["egfr_status"] == "positive" for r in rows) == round(3 * 0.34)
    assert {r["egfr_status"] for r in rows} <= {"positive", "negative"}
    assert len({r["study_uid"] for r in rows}) == 3
    # Same seed, same study: identical UIDs and bytes (generated here serially, there in a pool).
    row = rows[1]
    again = generate_study(tmp_path / "again", seed=5, geometry="axial2d", mask_kind=row["mask_kind"],
                           egfr_positive=row["egfr_status"] == "positive", patient_index=2)
    assert again.study_uid == row["study_uid"] and again.mask_sop_uid == row["mask_sop_uid"]
    assert _digests(again.folder) == _digests(out / row["folder"])
    # what the command wrote is valid DICOM, every file
    errors, warnings = _dciodvfy_errors(_files(out))
    assert errors == [] and all("Rescale" in line for line in warnings), (errors + warnings)[:5]


@pytest.mark.parametrize("argv", [
    ["--patients", "0", "--positive-fraction", "0.5", "--seed", "1"],
    ["--patients", "3", "--positive-fraction", "1.5", "--seed", "1"],
    ["--patients", "3", "--positive-fraction", "0.5", "--seed", "1", "--mask", "nifti"],
    ["--patients", "3", "--positive-fraction", "0.5"],
])
def test_cli_rejects_bad_arguments(tmp_path: Path, argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path), *argv])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("egfr-node phantom: error: ")


def test_generate_study_rejects_unknown_geometry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='"geometry"'):
        generate_study(tmp_path, seed=1, geometry="coronal")
    with pytest.raises(ValueError, match='"mask_kind"'):
        generate_study(tmp_path, seed=1, mask_kind="nifti")


def test_a_folder_never_mixes_two_studies(phantom_study) -> None:
    existing = phantom_study("axial2d", "seg")
    before = _digests(existing.folder)
    with pytest.raises(FileExistsError, match="already holds another study"):
        generate_study(existing.folder.parent, seed=8, geometry="axial2d", patient_index=0)
    assert _digests(existing.folder) == before


@pytest.mark.parametrize("mask_kind", MASK_KINDS)
def test_satellite_and_brain_segments_are_written_and_valid(phantom_study, mask_kind: str) -> None:
    study = phantom_study("axial2d", mask_kind, brain_segment=True, satellite=True, satellite_in_mask=True)
    assert study.mask_labels == ("Metastasis", "Metastasis 2", "Brain") and study.satellite
    errors, warnings = _dciodvfy_errors([_mask_path(study)])
    assert errors == [] and warnings == []
    masks = [(_seg_mask if mask_kind == "seg" else _rtstruct_mask)(study, number) for number in (1, 2, 3)]
    lesion, satellite, brain = (m.astype(bool) for m in masks)
    assert satellite.sum() < lesion.sum() and not np.any(lesion & satellite)
    assert np.mean(brain[lesion]) > 0.95 and np.mean(brain[satellite]) > 0.95  # both in the brain
    if mask_kind == "seg":
        labels = [item.SegmentLabel for item in hd.seg.segread(_mask_path(study)).SegmentSequence]
    else:
        labels = [item.ROIName for item in pydicom.dcmread(_mask_path(study)).StructureSetROISequence]
    assert labels == ["Metastasis", "Metastasis 2", "Brain"]
