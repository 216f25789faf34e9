"""Preprocessing on phantom studies (``pipeline.phantom``) in every geometry, checked against
the phantom's ground truth: lesion centroid and volume, and the known bias field.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.prep.bias import correct_bias_field
from pipeline.prep.brain import brain_mask
from pipeline.prep.normalize import zscore
from pipeline.prep.params import PreprocessParams
from pipeline.phantom import PhantomStudy
from pipeline.prep.preprocess import CorrectedVolume, ModelInput, correct_volume, model_input_from
from pipeline.load.study import LoadedStudy, load_study

CASES = [("axial2d", "seg"), ("axial2d", "rtstruct"), ("axial3d", "seg"), ("sagittal3d", "seg"), ("enhanced", "seg")]


@pytest.fixture(scope="session")
def preprocessed(phantom_study: Callable[..., PhantomStudy]) -> Callable[[str, str], tuple]:
    """``(geometry, mask_kind) -> (PhantomStudy, LoadedStudy, CorrectedVolume, ModelInput)``,
    with the default parameters, computed once (``preprocess`` is ``correct_volume`` + ``model_input_from``).
    """
    cache: dict[tuple[str, str], tuple[PhantomStudy, LoadedStudy, CorrectedVolume, ModelInput]] = {}

    def get(geometry: str, mask_kind: str) -> tuple[PhantomStudy, LoadedStudy, CorrectedVolume, ModelInput]:
        if (geometry, mask_kind) not in cache:
            phantom = phantom_study(geometry, mask_kind)
            study = load_study(phantom.folder)
            prepared = correct_volume(study)
            cache[(geometry, mask_kind)] = (phantom, study, prepared, model_input_from(study, prepared))
        return cache[(geometry, mask_kind)]

    return get


@pytest.mark.parametrize(("geometry", "mask_kind"), CASES)
def test_phantom_crop_centred_slices_right(preprocessed: Callable, geometry: str, mask_kind: str) -> None:
    phantom, study, _, model_input = preprocessed(geometry, mask_kind)
    prov = model_input.provenance
    spacing = study.image.GetSpacing()
    truth = np.asarray(phantom.lesion_centroid_lps)

    assert model_input.array.shape == (5, 3, 96, 96)
    assert model_input.array.dtype == np.float32
    assert np.isfinite(model_input.array).all()

    # the measured centroid is the phantom's (voxelisation moves it by well under a voxel)
    centroid = np.asarray(prov["lesion"]["centroid_lps_mm"])
    assert np.all(np.abs(centroid - truth) <= np.asarray(spacing) * 0.6 + 0.3)
    assert prov["lesion"]["volume_cm3"] == pytest.approx(phantom.lesion_volume_cm3, rel=0.15)

    # crop box centre within a voxel of the true centroid, in-plane (LPS x, y)
    low, high = prov["crop_box"]["lps_mm"]["low"], prov["crop_box"]["lps_mm"]["high"]
    centre = (np.asarray(low) + np.asarray(high)) / 2
    assert abs(centre[0] - truth[0]) <= spacing[0] * 1.1
    assert abs(centre[1] - truth[1]) <= spacing[1] * 1.1
    side = prov["crop_box"]["side_mm"]
    assert side[0] == pytest.approx(side[1], abs=max(spacing[:2]) + 1e-6)

    # five consecutive axial slices, the middle one holding the centroid's z
    slices = prov["slices"]
    assert slices["indices"] == list(range(slices["mid"] - 2, slices["mid"] + 3))
    assert abs(slices["z_mm"][2] - truth[2]) <= spacing[2] / 2 + 0.3
    assert np.allclose(np.diff(slices["z_mm"]), spacing[2])
    assert slices["mid_slice_lesion_voxels"] > 0

    # provenance names the source images of each slice and the chosen objects
    assert len(prov["source_sop_uids"]) == 5 and all(prov["source_sop_uids"])
    if geometry in ("axial2d", "axial3d"):
        expected = [[phantom.image_sop_uids[k]] for k in slices["indices"]]
        assert prov["source_sop_uids"] == expected
    assert prov["series_uid"] == phantom.image_series_uid
    assert prov["mask_sop_uid"] == phantom.mask_sop_uid

    # the lesion fills the middle of the crop and is brighter than the brain average
    mask = model_input.lesion_mask[2] > 0.5
    rows, cols = np.nonzero(mask)
    assert abs(rows.mean() - 47.5) < 6 and abs(cols.mean() - 47.5) < 6
    assert model_input.array[2, 0][mask].mean() > 0.5


@pytest.mark.parametrize("geometry", ["axial2d", "axial3d"])
def test_phantom_zscore_inside_brain_mask(preprocessed: Callable, geometry: str) -> None:
    _, study, prepared, model_input = preprocessed(geometry, "seg")
    inside = sitk.GetArrayViewFromImage(prepared.brain.mask) > 0
    z = zscore(prepared.corrected, prepared.stats)[inside].astype(np.float64)
    assert abs(z.mean()) < 1e-3
    assert abs(z.std() - 1.0) < 1e-3
    # the recorded statistics are those of the corrected image inside the brain mask (numpy
    # here), and the model input was normalised with them: with the output size equal to the
    # crop side in voxels the resize is the identity, so each slice is (corrected - mean) / sd
    values = prepared.corrected[inside].astype(np.float64)
    mean, sd = values.mean(), values.std()
    assert model_input.provenance["zscore"]["mean"] == pytest.approx(mean, rel=1e-9)
    assert model_input.provenance["zscore"]["sd"] == pytest.approx(sd, rel=1e-9)
    box = model_input.provenance["crop_box"]["voxels"]
    side = box["i1"] - box["i0"]
    assert box["j1"] - box["j0"] == side and side >= 8 and not model_input.provenance["crop_box"]["padded"]
    native = model_input_from(study, prepared, PreprocessParams(output_size=side))
    for s, k in enumerate(model_input.provenance["slices"]["indices"]):
        crop = prepared.corrected[k, box["j0"]:box["j1"], box["i0"]:box["i1"]].astype(np.float64)
        np.testing.assert_allclose(native.array[s, 0], (crop - mean) / sd, rtol=0, atol=1e-4)
    for array in (native.array, model_input.array):
        assert np.array_equal(array[:, 1:], np.broadcast_to(array[:, :1], array[:, 1:].shape))
    brain = prepared.brain
    # a brain of plausible size (the phantom is the MNI152 brain, scaled: about 1.5-2.1 l)
    assert 1000 < brain.volume_cm3 < 2800


def test_phantom_n4_removes_the_known_field(preprocessed: Callable) -> None:
    """N4 models the known field plus the anatomy's own slow variation (the MNI template
    has some). What it estimates on the phantom minus what it estimates once the known field
    is divided out must be the known field.
    """
    phantom, study, prepared, _ = preprocessed("axial3d", "seg")
    params = PreprocessParams()
    field = phantom.bias_field.on_image(study.image)
    known = np.log(sitk.GetArrayFromImage(field))
    flat = sitk.Divide(study.image, field)
    brain = prepared.brain
    inside = sitk.GetArrayViewFromImage(brain.mask) > 0
    biased = sitk.GetArrayFromImage(prepared.bias.log_field)
    unbiased = sitk.GetArrayFromImage(correct_bias_field(flat, brain.mask, params).log_field)
    removed = (biased - unbiased)[inside]
    assert np.corrcoef(removed, known[inside])[0, 1] > 0.99
    # the known field's non-uniformity (log SD about 0.06) is left at under a tenth of it
    before = known[inside].std()
    after = (known[inside] - removed).std()
    assert before > 0.02
    assert after < before / 10


def test_phantom_brain_segment_and_otsu_chain_agree(phantom_study: Callable, preprocessed: Callable) -> None:
    """The SEG's "Brain" segment is used when asked for; the Otsu chain finds the same brain.

    The image depends on the seed and geometry only, so the default axial2d phantom (no
    brain segment) carries the same image as the one with a brain segment.
    """
    phantom = phantom_study("axial2d", "seg", brain_segment=True)
    study = load_study(phantom.folder)
    assert study.brain is not None
    got = brain_mask(study.image, study.brain, PreprocessParams(brain_mask_method="segment"))
    assert got.method == "segment"
    segment = sitk.GetArrayViewFromImage(study.brain) > 0
    assert np.array_equal(sitk.GetArrayViewFromImage(got.mask) > 0, segment)
    _, plain, prepared, _ = preprocessed("axial2d", "seg")
    assert plain.image.GetSize() == study.image.GetSize()
    otsu = sitk.GetArrayViewFromImage(prepared.brain.mask) > 0
    assert prepared.brain.method == "otsu_chain"
    dice = 2 * np.count_nonzero(otsu & segment) / (np.count_nonzero(otsu) + np.count_nonzero(segment))
    assert dice > 0.95  # measured 0.98 (axial2d and axial3d)
