"""Preprocessing steps and ``preprocess`` on synthetic heads with a known bias field and lesion.

The synthetic head: an ellipsoid brain (grey 80, inner "white matter" 110) inside a
separate bright scalp shell, a spherical lesion (170) at a known voxel, a smooth known
multiplicative bias field ``exp(log_bias)`` and Gaussian noise (SD 2).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from pipeline.prep.bias import correct_bias_field, shrink_factors
from pipeline.prep.brain import brain_mask, otsu_chain_mask
from pipeline.prep.crop import crop_box, extract_crops, lesion_geometry, resize_crops, select_slices
from pipeline.errors import PreprocessError
from pipeline.prep.normalize import brain_statistics, zscore
from pipeline.prep.params import PreprocessParams
from pipeline.prep.preprocess import ModelInput, preprocess
from pipeline.load.study import LoadedStudy

ORIGIN = (-90.0, -100.0, -60.0)


@dataclass(frozen=True)
class SyntheticHead:
    image: sitk.Image
    lesion: sitk.Image
    brain: np.ndarray  # [k, j, i] bool
    grey: np.ndarray  # uniform tissue, eroded away from edges
    log_bias: np.ndarray
    lesion_ijk: tuple[float, float, float]
    clean: np.ndarray  # image before bias and noise


def make_head(
    size: tuple[int, int, int] = (96, 112, 72),
    spacing: tuple[float, float, float] = (1.6, 1.6, 1.6),
    lesion_ijk: tuple[float, float, float] = (62.0, 44.0, 36.0),
    lesion_radius_mm: float = 7.0,
    bias_strength: float = 0.3,
    seed: int = 0,
) -> SyntheticHead:
    rng = np.random.default_rng(seed)
    ni, nj, nk = size
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    x = (i - (ni - 1) / 2) * spacing[0]
    y = (j - (nj - 1) / 2) * spacing[1]
    z = (k - (nk - 1) / 2) * spacing[2]
    rb = (x / 62) ** 2 + (y / 76) ** 2 + (z / 48) ** 2
    rs = (x / 72) ** 2 + (y / 86) ** 2 + (z / 56) ** 2
    brain = rb < 1
    wm = rb < 0.45
    lesion = ((i - lesion_ijk[0]) * spacing[0]) ** 2 + ((j - lesion_ijk[1]) * spacing[1]) ** 2 + (
        (k - lesion_ijk[2]) * spacing[2]
    ) ** 2 <= lesion_radius_mm**2
    clean = np.full(brain.shape, 2.0)
    clean[(rs < 1) & (rs > 0.86)] = 140.0
    clean[brain] = 80.0
    clean[wm] = 110.0
    clean[lesion] = 170.0
    log_bias = bias_strength * (x / 80 + 0.6 * y / 90 - 0.5 * (z / 60) ** 2)
    img = np.abs(clean * np.exp(log_bias) + rng.normal(0.0, 2.0, clean.shape)).astype(np.float32)
    grey = ndimage.binary_erosion(brain & ~wm & ~lesion, iterations=2)

    def to_image(arr: np.ndarray) -> sitk.Image:
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing(spacing)
        im.SetOrigin(ORIGIN)
        return im

    return SyntheticHead(
        image=to_image(img),
        lesion=to_image(lesion.astype(np.uint8)),
        brain=brain,
        grey=grey,
        log_bias=log_bias,
        lesion_ijk=lesion_ijk,
        clean=clean,
    )


def loaded(head: SyntheticHead, brain: sitk.Image | None = None, lesion: sitk.Image | None = None) -> LoadedStudy:
    nk = head.image.GetSize()[2]
    return LoadedStudy(
        study_uid="1.2.826.0.1.3680043.8.498.1",
        image=head.image,
        lesion=lesion if lesion is not None else head.lesion,
        brain=brain,
        series_uid="1.2.826.0.1.3680043.8.498.2",
        mask_sop_uid="1.2.826.0.1.3680043.8.498.3",
        mask_kind="SEG",
        lesion_number=1,
        lesion_label="metastasis",
        source_sop_uids=tuple((f"1.2.826.0.1.3680043.8.498.10.{k}",) for k in range(nk)),
        selection={"rule": "synthetic"},
    )


@pytest.fixture(scope="session")
def head() -> SyntheticHead:
    return make_head()


@pytest.fixture(scope="session")
def model_input(head: SyntheticHead) -> ModelInput:
    return preprocess(loaded(head))


# --- params -------------------------------------------------------------------------------


def test_params_round_trip_and_defaults() -> None:
    params = PreprocessParams(crop_margin_mm=12.5, slice_edge_policy="replicate", n4_levels=3)
    values = params.to_dict()
    assert PreprocessParams.from_dict(values) == params
    import json

    assert PreprocessParams.from_dict(json.loads(json.dumps(values))) == params  # as a bundle manifest
    assert PreprocessParams.from_dict({}) == PreprocessParams()
    default = PreprocessParams()
    assert default.slice_count == 5
    assert (default.output_size, default.channels, default.interpolation) == (96, 3, "linear")
    assert (default.n4_levels, default.n4_iterations, default.n4_convergence, default.n4_histogram_bins) == (
        4, 50, 0.001, 200,
    )


def test_params_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(ValueError, match=r"^preprocessing\.crop_mm: unknown key \(known: bias_correction, "):
        PreprocessParams.from_dict({"crop_mm": 3.0})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"slice_offset": -1}, ValueError, 'preprocessing.slice_offset: must be at least 0, got -1'),
        ({"slice_offset": 2.0}, TypeError, 'preprocessing.slice_offset: must be an integer, got 2.0'),
        ({"output_size": True}, TypeError, 'preprocessing.output_size: must be an integer, got True'),
        ({"crop_margin_mm": "10"}, TypeError, "preprocessing.crop_margin_mm: must be a number, got '10'"),
        ({"crop_margin_mm": float("nan")}, ValueError, 'preprocessing.crop_margin_mm: must be finite, got nan'),
        ({"n4_shrink_spacing_mm": 0.0}, ValueError, 'preprocessing.n4_shrink_spacing_mm: must be greater than 0, got 0.0'),
        ({"brain_mask_method": "bet"}, ValueError, "preprocessing.brain_mask_method: must be one of otsu_chain, segment, got 'bet'"),
        ({"interpolation": 1}, TypeError, 'preprocessing.interpolation: must be one of linear, nearest, got 1'),
        ({"bias_correction": 1}, TypeError, 'preprocessing.bias_correction: must be true or false, got 1'),
    ],
)
def test_params_validation(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(")):
        PreprocessParams(**kwargs)


# --- steps ----------------------------------------------------------------------------------


def test_shrink_factors_follow_voxel_size() -> None:
    assert shrink_factors((1.0, 1.0, 1.0), 4.0) == (4, 4, 4)
    assert shrink_factors((0.45, 0.45, 5.0), 4.0) == (9, 9, 1)


def test_otsu_chain_finds_the_brain_not_the_scalp(head: SyntheticHead) -> None:
    mask = sitk.GetArrayFromImage(otsu_chain_mask(head.image, PreprocessParams())).astype(bool)
    dice = 2 * np.count_nonzero(mask & head.brain) / (np.count_nonzero(mask) + np.count_nonzero(head.brain))
    assert dice > 0.97
    scalp = (head.clean == 140.0)
    assert np.count_nonzero(mask & scalp) / np.count_nonzero(scalp) < 0.02


def test_brain_mask_segment_and_fallbacks(head: SyntheticHead) -> None:
    segment = sitk.GetImageFromArray(head.brain.astype(np.uint8))
    segment.CopyInformation(head.image)
    got = brain_mask(head.image, segment, PreprocessParams(brain_mask_method="segment"))
    assert got.method == "segment"
    assert np.array_equal(sitk.GetArrayViewFromImage(got.mask).astype(bool), head.brain)
    fallback = brain_mask(head.image, None, PreprocessParams(brain_mask_method="segment"))
    assert fallback.method == "otsu_chain"
    with pytest.raises(PreprocessError, match="^brain_mask_method is 'segment' but the mask object has no brain segment$"):
        brain_mask(head.image, None, PreprocessParams(brain_mask_method="segment", brain_mask_fallback="error"))
    empty = sitk.Image(head.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(head.image)
    with pytest.raises(PreprocessError, match=r"^brain mask \(segment\) is empty$"):
        brain_mask(head.image, empty, PreprocessParams(brain_mask_method="segment"))


def test_n4_flattens_a_known_bias_field(head: SyntheticHead) -> None:
    segment = sitk.GetImageFromArray(head.brain.astype(np.uint8))
    segment.CopyInformation(head.image)
    result = correct_bias_field(head.image, segment, PreprocessParams())
    before = sitk.GetArrayViewFromImage(head.image)[head.grey]
    after = sitk.GetArrayViewFromImage(result.corrected)[head.grey]
    cv_before = before.std() / before.mean()
    cv_after = after.std() / after.mean()
    # the field spans +-30%: the grey-matter CV drops from about 0.15 to the noise level
    assert cv_before > 0.12
    assert cv_after < cv_before / 3
    log_field = sitk.GetArrayViewFromImage(result.log_field)
    assert np.corrcoef(log_field[head.brain], head.log_bias[head.brain])[0, 1] > 0.95
    assert result.shrink == (2, 2, 2)  # 4 mm / 1.6 mm = 2.5, rounded half to even
    assert result.corrected.GetSize() == head.image.GetSize()
    assert result.corrected.GetPixelID() == sitk.sitkFloat32


def test_zscore_inside_brain_is_standard(head: SyntheticHead) -> None:
    arr = sitk.GetArrayViewFromImage(head.image)
    stats = brain_statistics(arr, head.brain)
    z = zscore(arr, stats)
    assert abs(float(z[head.brain].astype(np.float64).mean())) < 1e-3
    assert abs(float(z[head.brain].astype(np.float64).std()) - 1.0) < 1e-3
    assert stats.voxels == int(np.count_nonzero(head.brain))
    with pytest.raises(PreprocessError, match="^brain mask is empty: no intensities for the z-score$"):
        brain_statistics(arr, np.zeros_like(head.brain))


def test_lesion_geometry_and_slices(head: SyntheticHead) -> None:
    geom = lesion_geometry(head.lesion)
    assert np.allclose(geom.centroid_index, head.lesion_ijk, atol=0.05)
    expected_lps = np.asarray(ORIGIN) + np.asarray(head.lesion_ijk) * 1.6
    assert np.allclose(geom.centroid_lps, expected_lps, atol=0.1)
    # a 7 mm sphere on 1.6 mm voxels: 4/3 pi 7^3 = 1.437 cm3 within voxelisation error
    assert geom.volume_cm3 == pytest.approx(4 / 3 * math.pi * 0.7**3, rel=0.1)
    slices = select_slices(geom, 72, PreprocessParams())
    assert slices.mid == 36
    assert slices.indices == (34, 35, 36, 37, 38)
    assert not slices.replicated


def test_slices_at_the_edge_error_or_replicate() -> None:
    head = make_head(lesion_ijk=(62.0, 44.0, 1.0), lesion_radius_mm=2.5)
    geom = lesion_geometry(head.lesion)
    with pytest.raises(PreprocessError, match=r"^lesion centre is on slice 1 of 72: too close to the edge"):
        select_slices(geom, 72, PreprocessParams())
    slices = select_slices(geom, 72, PreprocessParams(slice_edge_policy="replicate"))
    assert slices.indices == (0, 0, 1, 2, 3)
    assert slices.replicated


def test_crop_box_is_square_centred_and_holds_lesion_plus_margin(head: SyntheticHead) -> None:
    params = PreprocessParams()
    geom = lesion_geometry(head.lesion)
    slices = select_slices(geom, 72, params)
    box = crop_box(sitk.GetArrayViewFromImage(head.lesion), geom, slices, (1.6, 1.6, 1.6), params)
    assert box.i1 - box.i0 == box.j1 - box.j0
    centre = ((box.i0 + box.i1 - 1) / 2, (box.j0 + box.j1 - 1) / 2)
    assert abs(centre[0] - head.lesion_ijk[0]) <= 0.5 and abs(centre[1] - head.lesion_ijk[1]) <= 0.5
    # lesion radius 7 mm + margin 10 mm = 17 mm half side at least, less than one voxel more
    assert 34.0 <= box.side_mm[0] < 34.0 + 2 * 1.6 + 1e-6
    bigger = crop_box(
        sitk.GetArrayViewFromImage(head.lesion), geom, slices, (1.6, 1.6, 1.6),
        dataclasses.replace(params, crop_min_side_mm=60.0),
    )
    assert 60.0 <= bigger.side_mm[0] < 60.0 + 2 * 1.6


def test_extract_crops_pads_outside_the_image() -> None:
    volume = np.arange(2 * 4 * 5, dtype=np.float32).reshape(2, 4, 5)
    from pipeline.prep.crop import CropBox, SliceSelection

    box = CropBox(i0=-1, i1=2, j0=2, j1=5, centre=(0, 3), side_mm=(3.0, 3.0))
    slices = SliceSelection(mid=1, indices=(1,), replicated=False)
    padded = extract_crops(volume, slices, box, -7.0)
    assert padded.shape == (1, 3, 3)
    assert padded[0, 0].tolist() == [-7.0, 30.0, 31.0]
    assert padded[0, 2].tolist() == [-7.0, -7.0, -7.0]
    edge = extract_crops(volume, slices, box, None)
    assert edge[0, 2].tolist() == [35.0, 35.0, 36.0]


def test_resize_is_exact_on_constant_and_linear_images() -> None:
    const = np.full((2, 37, 37), 3.25, dtype=np.float32)
    assert np.allclose(resize_crops(const, 96), 3.25)
    ramp = np.tile(np.arange(40, dtype=np.float32), (1, 40, 1))
    out = resize_crops(ramp, 80)
    # pixel-area aligned: output column u samples input position (u + 0.5) / 2 - 0.5
    assert out.shape == (1, 80, 80)
    assert out[0, 10, 1] == pytest.approx(0.25)
    assert out[0, 10, 40] == pytest.approx(19.75)
    near = resize_crops(ramp, 20, "nearest")
    assert near[0, 0, :3].tolist() == [1.0, 3.0, 5.0]


# --- preprocess ------------------------------------------------------------------------------


def test_preprocess_output_shape_dtype_finite(model_input: ModelInput) -> None:
    assert model_input.array.shape == (5, 3, 96, 96)
    assert model_input.array.dtype == np.float32
    assert np.isfinite(model_input.array).all()
    assert np.array_equal(model_input.array[:, 0], model_input.array[:, 2])
    assert model_input.lesion_mask is not None and model_input.lesion_mask.shape == (5, 96, 96)


def test_preprocess_crop_centred_on_lesion(model_input: ModelInput, head: SyntheticHead) -> None:
    prov = model_input.provenance
    vox = prov["crop_box"]["voxels"]
    centre_i = (vox["i0"] + vox["i1"] - 1) / 2
    centre_j = (vox["j0"] + vox["j1"] - 1) / 2
    assert abs(centre_i - head.lesion_ijk[0]) <= 1.0
    assert abs(centre_j - head.lesion_ijk[1]) <= 1.0
    # the lesion mask, resized the same way, has its centre of mass in the middle of the crop
    mid = model_input.lesion_mask[2]
    rows, cols = np.nonzero(mid > 0.5)
    assert abs(rows.mean() - 47.5) < 2.0 and abs(cols.mean() - 47.5) < 2.0
    # lesion (170 raw) is bright in the crop centre, z-scored
    assert model_input.array[2, 0, 44:52, 44:52].mean() > 2.0
    low, high = prov["crop_box"]["lps_mm"]["low"], prov["crop_box"]["lps_mm"]["high"]
    centroid = prov["lesion"]["centroid_lps_mm"]
    assert abs((low[0] + high[0]) / 2 - centroid[0]) <= 1.6
    assert abs((low[1] + high[1]) / 2 - centroid[1]) <= 1.6


def test_preprocess_slices_and_provenance(model_input: ModelInput) -> None:
    prov = model_input.provenance
    slices = prov["slices"]
    assert slices["indices"] == [34, 35, 36, 37, 38]
    assert slices["z_mm"] == pytest.approx([ORIGIN[2] + 1.6 * k for k in range(34, 39)])
    assert slices["mid_slice_lesion_voxels"] > 0
    assert prov["source_sop_uids"][2] == ["1.2.826.0.1.3680043.8.498.10.36"]
    assert prov["brain_mask"]["method"] == "otsu_chain"
    assert prov["params"] == PreprocessParams().to_dict()
    assert set(prov["timings_s"]) == {"lesion_and_slices", "brain_mask", "bias_field", "zscore", "crop_resize", "total"}
    assert prov["lesion"]["volume_cm3"] == pytest.approx(4 / 3 * math.pi * 0.7**3, rel=0.1)
    import json

    json.dumps(prov, allow_nan=False)


def test_preprocess_normalises_with_brain_statistics(head: SyntheticHead) -> None:
    """Without resizing effects (output size = crop side in voxels): the model input is
    (image - mean) / sd of the crop, mean and SD of the brain voxels computed here with numpy."""
    segment = sitk.GetImageFromArray(head.brain.astype(np.uint8))
    segment.CopyInformation(head.image)
    params = PreprocessParams(brain_mask_method="segment", bias_correction=False, output_size=8, crop_margin_mm=0.0)
    box = preprocess(loaded(head, brain=segment), params).provenance["crop_box"]["voxels"]
    side = box["i1"] - box["i0"]
    assert box["j1"] - box["j0"] == side and side >= 8
    out = preprocess(loaded(head, brain=segment), dataclasses.replace(params, output_size=side))
    assert out.provenance["crop_box"]["voxels"] == box
    image = sitk.GetArrayFromImage(head.image).astype(np.float64)  # no bias correction: corrected = image
    mean, sd = image[head.brain].mean(), image[head.brain].std()
    assert out.provenance["zscore"]["mean"] == pytest.approx(mean, rel=1e-9)
    assert out.provenance["zscore"]["sd"] == pytest.approx(sd, rel=1e-9)
    assert out.provenance["brain_mask"]["method"] == "segment"
    assert out.array.shape == (5, 3, side, side)
    for s, k in enumerate(out.provenance["slices"]["indices"]):
        expected = (image[k, box["j0"]:box["j1"], box["i0"]:box["i1"]] - mean) / sd
        np.testing.assert_allclose(out.array[s, 0], expected, rtol=0, atol=1e-4)
    assert np.array_equal(out.array[:, 1:], np.broadcast_to(out.array[:, :1], out.array[:, 1:].shape))


def test_preprocess_errors(head: SyntheticHead) -> None:
    empty = sitk.Image(head.image.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(head.image)
    where = r" \(study 1\.2\.826\.0\.1\.3680043\.8\.498\.1, series 1\.2\.826\.0\.1\.3680043\.8\.498\.2\)$"
    with pytest.raises(PreprocessError, match="^lesion mask is empty on the image grid" + where):
        preprocess(loaded(head, lesion=empty))
    edge = make_head(lesion_ijk=(62.0, 44.0, 70.0), lesion_radius_mm=2.5)
    with pytest.raises(PreprocessError, match="^lesion centre is on slice 70 of 72: too close to the edge of the volume for [+]-2 slices" + where):
        preprocess(loaded(edge))
    with pytest.raises(PreprocessError, match=r"^brain mask \(segment\) is empty" + where):
        preprocess(loaded(head, brain=empty), PreprocessParams(brain_mask_method="segment"))


def test_a_mask_that_cannot_carry_a_lesion_is_refused(head: SyntheticHead) -> None:
    """Issue 29, defect 5: a SEG with one voxel set was predicted ("negative, p = 0.343"). A
    mask smaller than a 3 mm sphere at the series' spacing (1.6 mm: 3 voxels), or a lesion the
    field of view cuts, fails with that reason; a site may set its own minimum."""
    one = sitk.Image(head.image.GetSize(), sitk.sitkUInt8)
    one.CopyInformation(head.image)
    one[62, 44, 36] = 1
    with pytest.raises(PreprocessError, match=r"^lesion mask has 1 voxels, fewer than the 3 a 3 mm sphere holds at this "
                                              r"series' spacing \(1\.6 x 1\.6 x 1\.6 mm\)"):
        preprocess(loaded(head, lesion=one), PreprocessParams(bias_correction=False))
    out = preprocess(loaded(head, lesion=one), PreprocessParams(bias_correction=False, min_lesion_diameter_mm=0.0))
    assert out.array.shape[0] == 5  # a site that wants even a single voxel read can say so
    cut = make_head(lesion_ijk=(2.0, 44.0, 36.0), lesion_radius_mm=6.0)
    with pytest.raises(PreprocessError, match=r"lesion touches the edge of the series along its columns \(left-right\) "
                                              r"\(index 0 of 96\): the field of view cut it"):
        preprocess(loaded(cut), PreprocessParams(bias_correction=False))


def test_preprocess_replicates_edge_slices_when_asked() -> None:
    edge = make_head(lesion_ijk=(62.0, 44.0, 70.0), lesion_radius_mm=2.5)
    out = preprocess(loaded(edge), PreprocessParams(slice_edge_policy="replicate", bias_correction=False))
    assert out.provenance["slices"]["indices"] == [68, 69, 70, 71, 71]
    assert out.provenance["slices"]["replicated_at_edge"] is True
    assert np.array_equal(out.array[3], out.array[4])


def test_preprocess_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, pipeline.prep.preprocess, dicom_node.commands.preprocess_files, dicom_node.commands.preprocess; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_crop_extent_slices_ignores_lesion_parts_away_from_the_slices(head: SyntheticHead) -> None:
    """A lesion with a thin in-plane tail 10 slices above its centre: the whole-lesion box
    holds the tail, the five-slice box does not, and both are centred on the centroid voxel.
    """
    lesion = sitk.GetArrayFromImage(head.lesion)
    lesion[46, 44, 62:80] = 1  # tail along +i, on slice k = 46 (centre k = 36)
    image = sitk.GetImageFromArray(lesion)
    image.CopyInformation(head.lesion)
    geom = lesion_geometry(image)
    whole = PreprocessParams(crop_extent="lesion")
    slices = select_slices(geom, 72, whole)
    box_lesion = crop_box(lesion, geom, slices, (1.6, 1.6, 1.6), whole)
    box_slices = crop_box(lesion, geom, slices, (1.6, 1.6, 1.6), PreprocessParams(crop_extent="slices"))
    assert box_lesion.i1 > 79 and box_slices.i1 <= 79
    assert box_slices.side_mm[0] < box_lesion.side_mm[0]
    assert box_slices.centre == box_lesion.centre
    on_slices = lesion[list(slices.indices)]
    rows, cols = np.nonzero(on_slices.any(axis=0))
    assert box_slices.i0 <= cols.min() and cols.max() < box_slices.i1
    assert box_slices.j0 <= rows.min() and rows.max() < box_slices.j1


def test_provenance_on_a_tilted_grid_gives_slice_z_at_the_lesion(head: SyntheticHead) -> None:
    """A near-axial acquisition tilted 8 deg keeps its acquired slices (pipeline.load.volume): the
    recorded z of the mid slice is where the crop is, not at the image corner."""
    tilt = np.deg2rad(8.0)
    direction = (1.0, 0.0, 0.0, 0.0, np.cos(tilt), -np.sin(tilt), 0.0, np.sin(tilt), np.cos(tilt))
    image, lesion = sitk.Image(head.image), sitk.Image(head.lesion)
    for im in (image, lesion):
        im.SetDirection(direction)
    study = loaded(SyntheticHead(image, lesion, head.brain, head.grey, head.log_bias, head.lesion_ijk, head.clean))
    prov = preprocess(study).provenance
    centroid_z = prov["lesion"]["centroid_lps_mm"][2]
    mid = prov["slices"]["indices"].index(prov["slices"]["mid"])
    spacing_z = image.GetSpacing()[2]
    assert abs(prov["slices"]["z_mm"][mid] - centroid_z) <= spacing_z
    corner_z = image.TransformIndexToPhysicalPoint((0, 0, prov["slices"]["mid"]))[2]
    assert abs(corner_z - centroid_z) > 3 * spacing_z  # what the corner would have said
    low, high = prov["crop_box"]["lps_mm"]["low"], prov["crop_box"]["lps_mm"]["high"]
    assert len(low) == len(high) == 3 and abs(low[2] - high[2]) > 1.0  # the box is tilted too
