"""Image formation: anatomy + lesions on the acquisition grid, bias field, Rician noise, scale.

Thick slices (2D 5 mm) are integrated over the slab (three sub-planes averaged), so partial
volume looks like a real 2D acquisition. The lesion mask is the analytic lesion sampled at
voxel centres; its true centroid and volume are integrated on a 0.5 mm grid independently
of the acquisition grid, so tests can check the written mask against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from pipeline.phantom.anatomy import HeadModel
from pipeline.phantom.geometry import Grid, HeadPose, point3
from pipeline.phantom.lesion import Lesion

__all__ = ["BiasField", "Rendered", "lesion_truth", "render", "sample_bias_field"]

_TERMS = ("x", "y", "z", "xx", "yy", "zz", "xy", "xz", "yz")


@dataclass(frozen=True)
class BiasField:
    """Smooth multiplicative field: ``b(p) = exp(sum_k c_k m_k(u))``, ``u = (p - centre) / half_extent_mm``.

    ``m_k`` are the monomials of degree 1 and 2 named in ``terms``; ``p`` patient LPS mm. The
    field is a property of the coil and so lives in patient space, not in the head.
    """

    centre_lps: tuple[float, float, float]
    half_extent_mm: float
    coefficients: tuple[float, ...]
    terms: tuple[str, ...] = _TERMS

    def evaluate(self, points_lps: np.ndarray) -> np.ndarray:
        """Field value (N,) at patient points (N, 3)."""
        u = (np.asarray(points_lps, dtype=np.float64) - np.asarray(self.centre_lps)) / self.half_extent_mm
        axis = {"x": 0, "y": 1, "z": 2}
        log_field = np.zeros(len(u))
        for coefficient, term in zip(self.coefficients, self.terms):
            value = np.ones(len(u))
            for letter in term:
                value = value * u[:, axis[letter]]
            log_field += coefficient * value
        return np.exp(log_field)

    def on_grid(self, origin: tuple[float, ...], spacing: tuple[float, ...], direction: tuple[float, ...],
                size: tuple[int, ...]) -> np.ndarray:
        """Field values as a float32 array [k, j, i] on a SimpleITK-style grid."""
        m = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        steps = [np.arange(n, dtype=np.float64) * d for n, d in zip(size, spacing)]
        axes = [steps[0][None, None, :], steps[1][None, :, None], steps[2][:, None, None]]
        u = []
        for row in range(3):
            value = (origin[row] - self.centre_lps[row]) + sum(m[row, c] * axes[c] for c in range(3))
            u.append((value / self.half_extent_mm).astype(np.float32))
        index = {"x": 0, "y": 1, "z": 2}
        log_field = np.zeros(tuple(size[::-1]), dtype=np.float32)
        for coefficient, term in zip(self.coefficients, self.terms):
            value = u[index[term[0]]]
            for letter in term[1:]:
                value = value * u[index[letter]]
            log_field += np.float32(coefficient) * value
        return np.exp(log_field)

    def on_image(self, reference: sitk.Image) -> sitk.Image:
        """The field as a float32 image on the grid of ``reference`` (any orientation)."""
        array = self.on_grid(reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection(),
                             reference.GetSize())
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(reference)
        return image

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable parameters."""
        return {"centre_lps": list(self.centre_lps), "half_extent_mm": self.half_extent_mm,
                "coefficients": list(self.coefficients), "terms": list(self.terms)}


def sample_bias_field(rng: np.random.Generator, centre_lps: np.ndarray) -> BiasField:
    """A random field whose max/min ratio over a 100 mm sphere is 1.3-1.7."""
    coefficients = rng.standard_normal(len(_TERMS))
    coefficients[3:] *= 0.5
    probe = rng.standard_normal((2000, 3))
    probe = probe / np.linalg.norm(probe, axis=1)[:, None] * rng.uniform(0, 1, (2000, 1)) ** (1 / 3)
    unit = BiasField(point3(centre_lps), 100.0, tuple(float(v) for v in coefficients))
    log_range = np.ptp(np.log(unit.evaluate(np.asarray(centre_lps) + 100.0 * probe)))
    coefficients *= np.log(rng.uniform(1.3, 1.7)) / max(log_range, 1e-9)
    return BiasField(unit.centre_lps, 100.0, tuple(float(v) for v in coefficients))


@dataclass(frozen=True)
class Rendered:
    """Noise-free-of-scale image and masks on the grid, arrays in [k, j, i] order."""

    relative: np.ndarray  # float32, WM ~ 1 before the bias field and noise
    lesion_mask: np.ndarray  # uint8
    satellite_mask: np.ndarray  # uint8 (zeros when there is no satellite)
    brain_mask: np.ndarray  # uint8


def _voxel_points(grid: Grid, lo: np.ndarray, hi: np.ndarray, dk: float = 0.0) -> np.ndarray:
    """Patient points of the voxels in the index box [lo, hi) in [k, j, i] C order."""
    k, j, i = np.meshgrid(*(np.arange(lo[a], hi[a], dtype=np.float64) for a in (2, 1, 0)), indexing="ij")
    return grid.index_to_lps(np.stack([i.ravel(), j.ravel(), k.ravel() + dk], axis=1))


def _box(grid: Grid, pose: HeadPose, lesion: Lesion, reach_mm: float) -> tuple[np.ndarray, np.ndarray]:
    centre = grid.lps_to_index(pose.to_patient(lesion.centre[None]))[0]
    half = reach_mm * 1.1 / np.asarray(grid.spacing) + 1
    lo = np.clip(np.floor(centre - half), 0, np.asarray(grid.size)).astype(int)
    hi = np.clip(np.ceil(centre + half) + 1, 0, np.asarray(grid.size)).astype(int)
    return lo, hi


def _slab_offsets(grid: Grid) -> np.ndarray:
    if grid.slice_thickness <= 1.5 * min(grid.spacing[:2]):
        return np.zeros(1)
    return np.array([-1.0, 0.0, 1.0]) / 3.0 * grid.slice_thickness / grid.spacing[2]


def render(head: HeadModel, grid: Grid, pose: HeadPose, lesions: list[Lesion]) -> Rendered:
    """Relative T1+c image, lesion masks and brain mask on ``grid``; lesions[0] is the main one."""
    transform = pose.transform()
    offsets = _slab_offsets(grid)
    matrix = grid.matrix
    slabs = []
    for dk in offsets:
        reference = grid.reference()
        reference.SetOrigin(tuple(np.asarray(grid.origin) + matrix[:, 2] * dk * grid.spacing[2]))
        moved = sitk.Resample(head.t1c, reference, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        slabs.append(sitk.GetArrayFromImage(moved))
    masks = []
    for lesion in lesions:
        lo, hi = _box(grid, pose, lesion, lesion.reach_mm())
        shape = tuple(hi[a] - lo[a] for a in (2, 1, 0))
        if min(shape) <= 0:
            masks.append(np.zeros(grid.size[::-1], np.uint8))
            continue
        region = tuple(slice(lo[a], hi[a]) for a in (2, 1, 0))
        for slab, dk in zip(slabs, offsets):
            q = pose.to_template(_voxel_points(grid, lo, hi, dk))
            background = slab[region].ravel()
            slab[region] = lesion.render(q, background, head.sample(head.wm, q)).reshape(shape)
        lo, hi = _box(grid, pose, lesion, lesion.extent_mm())
        region = tuple(slice(lo[a], hi[a]) for a in (2, 1, 0))
        inside = lesion.inside(pose.to_template(_voxel_points(grid, lo, hi)))
        mask = np.zeros(grid.size[::-1], np.uint8)
        mask[region] = inside.reshape(tuple(hi[a] - lo[a] for a in (2, 1, 0)))
        masks.append(mask)
    relative = np.mean(slabs, axis=0).astype(np.float32)
    brain_image = sitk.GetImageFromArray(head.brain.astype(np.uint8))
    brain_image.CopyInformation(head.t1c)
    brain = sitk.GetArrayFromImage(sitk.Resample(brain_image, grid.reference(), transform, sitk.sitkNearestNeighbor, 0))
    satellite = masks[1] if len(masks) > 1 else np.zeros_like(masks[0])
    return Rendered(relative=relative, lesion_mask=masks[0], satellite_mask=satellite,
                    brain_mask=brain.astype(np.uint8))


def lesion_truth(pose: HeadPose, lesion: Lesion, step_mm: float = 0.5) -> tuple[tuple[float, float, float], float]:
    """Centroid (patient LPS mm) and volume (cm3) of the lesion, integrated on a fine grid."""
    reach = lesion.extent_mm()
    axis = np.arange(-reach, reach + step_mm / 2, step_mm)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    q = lesion.centre + np.stack([x.ravel(), y.ravel(), z.ravel()], axis=1)
    inside = lesion.inside(q)
    centroid_template = q[inside].mean(axis=0)
    centroid = pose.to_patient(centroid_template[None])[0]
    volume_cm3 = inside.sum() * step_mm**3 / 1000.0 * pose.volume_scale
    return point3(centroid), float(volume_cm3)
