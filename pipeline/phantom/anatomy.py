"""Head anatomy for the phantom: the MNI152 2009a template that nilearn ships in its wheel.

The template (``mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz``, 1 mm, skull-stripped) and
its grey/white matter probability maps are read with SimpleITK straight from the installed
nilearn package, so nothing is downloaded and nilearn itself is never imported. Around the
brain a synthetic head is built from the distance to the brain surface: CSF, an enhancing
dura, the skull (dark cortical bone with brighter diploe) and the scalp (bright fat), so the
brain has to be extracted the way it would be on a clinical post-contrast T1.

Intensities are relative: white matter = 1.0. Arrays are in SimpleITK's numpy order
``[z, y, x]`` on the template grid; physical coordinates are patient LPS in mm.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["HeadModel", "head_model", "template_dir"]

_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
_WM_TEMPLATE_VALUE = 222.0  # median template value where P(WM) > 0.9

# (outer distance from the brain surface in mm, relative T1+c intensity) of the head layers
_LAYERS = (
    (1.5, 0.22),  # subarachnoid CSF
    (2.6, 0.75),  # enhancing dura / venous sinuses
    (4.2, 0.07),  # outer skull table
    (6.0, 0.42),  # diploe (marrow)
    (7.4, 0.07),  # inner skull table
    (11.0, 0.95),  # subcutaneous fat
    (12.5, 0.55),  # skin
)


def template_dir() -> Path:
    """Folder of the MNI152 files inside the installed nilearn wheel."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("nilearn is not installed; the phantom needs its MNI152 template")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not (folder / _T1).is_file():
        raise RuntimeError(f"MNI152 template missing from nilearn at {folder}")
    return folder


@dataclass(frozen=True)
class HeadModel:
    """Relative T1+c head image and tissue maps on the 1 mm template grid."""

    t1c: sitk.Image  # float32, WM = 1.0, air = 0
    brain: np.ndarray  # bool [z, y, x]
    wm: np.ndarray  # float32 probability [z, y, x]
    gm: np.ndarray  # float32 probability [z, y, x]
    depth_mm: np.ndarray  # float32 distance inside the brain to its surface [z, y, x]
    junction_lps: np.ndarray  # (N, 3) grey-white junction voxels (P(GM), P(WM) > 0.15), LPS mm
    junction_depth_mm: np.ndarray  # (N,) their distance to the brain surface

    def to_index(self, points_lps: np.ndarray) -> np.ndarray:
        """Continuous array indices ``[z, y, x]`` (N, 3) of patient points (N, 3) in template space."""
        origin = np.asarray(self.t1c.GetOrigin())
        spacing = np.asarray(self.t1c.GetSpacing())
        direction = np.asarray(self.t1c.GetDirection()).reshape(3, 3)
        ijk: np.ndarray = (np.asarray(points_lps, dtype=np.float64) - origin) @ direction / spacing
        return ijk[:, ::-1]

    def to_lps(self, index_zyx: np.ndarray) -> np.ndarray:
        """Patient points (N, 3) of array indices ``[z, y, x]`` (N, 3) in template space."""
        origin = np.asarray(self.t1c.GetOrigin())
        spacing = np.asarray(self.t1c.GetSpacing())
        direction = np.asarray(self.t1c.GetDirection()).reshape(3, 3)
        ijk = np.asarray(index_zyx, dtype=np.float64)[:, ::-1] * spacing
        points: np.ndarray = ijk @ direction.T + origin
        return points

    def sample(self, array: np.ndarray, points_lps: np.ndarray) -> np.ndarray:
        """Trilinear value of a template-grid array at template-space points."""
        values: np.ndarray = ndimage.map_coordinates(array, self.to_index(points_lps).T, order=1, mode="nearest")
        return values


@functools.lru_cache(maxsize=1)
def head_model() -> HeadModel:
    """Build (once per process) the synthetic head around the MNI152 brain."""
    folder = template_dir()
    t1_image = sitk.ReadImage(str(folder / _T1), sitk.sitkFloat32)
    t1 = sitk.GetArrayFromImage(t1_image)
    gm = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / _GM), sitk.sitkFloat32)) / 255.0
    wm = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / _WM), sitk.sitkFloat32)) / 255.0

    brain = ndimage.binary_fill_holes(t1 > 0)
    brain_image = sitk.GetImageFromArray(brain.astype(np.uint8))
    brain_image.CopyInformation(t1_image)
    signed = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(brain_image, insideIsPositive=True,
                                                                 squaredDistance=False, useImageSpacing=True))
    depth = np.maximum(signed, 0.0).astype(np.float32)
    outside = np.maximum(-signed, 0.0).astype(np.float32)

    # Layer thickness varies smoothly around the head (fixed pattern: it is one anatomy).
    rng = np.random.default_rng(20220101)
    wobble = ndimage.gaussian_filter(rng.standard_normal((24, 28, 24)), 2.0)
    wobble = ndimage.zoom(wobble / wobble.std(), np.array(t1.shape) / np.array(wobble.shape), order=1)
    scaled = outside / (1.0 + 0.12 * wobble[: t1.shape[0], : t1.shape[1], : t1.shape[2]])

    head = np.zeros(t1.shape, dtype=np.float32)
    inner = 0.0
    for outer, value in _LAYERS:
        head[(scaled > inner) & (scaled <= outer)] = value
        inner = outer
    head = ndimage.gaussian_filter(head, 0.6)
    relative = np.where(brain, t1 / _WM_TEMPLATE_VALUE, head).astype(np.float32)
    # Sulcal CSF inside the template mask stays dark; the cortex keeps the template contrast.
    image = sitk.GetImageFromArray(relative)
    image.CopyInformation(t1_image)
    junction = np.argwhere((gm > 0.15) & (wm > 0.15) & (depth >= 4.0))
    junction_lps = _index_to_lps(t1_image, junction)
    return HeadModel(t1c=image, brain=brain, wm=wm.astype(np.float32), gm=gm.astype(np.float32), depth_mm=depth,
                     junction_lps=junction_lps, junction_depth_mm=depth[tuple(junction.T)])


def _index_to_lps(image: sitk.Image, index_zyx: np.ndarray) -> np.ndarray:
    origin, spacing = np.asarray(image.GetOrigin()), np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    points: np.ndarray = (np.asarray(index_zyx, dtype=np.float64)[:, ::-1] * spacing) @ direction.T + origin
    return points
