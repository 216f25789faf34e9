"""Acquisition geometry of a phantom series: the voxel grid in patient LPS and the head pose.

Four protocols, as a clinic would send them:

- ``axial2d``: 2D spin echo, axial 5 mm slices, 0.86-0.94 mm in-plane, 256 matrix;
- ``axial3d``: 3D gradient echo (MPRAGE-like), 1 mm isotropic, acquired axially;
- ``sagittal3d``: the same 3D sequence acquired sagittally (rows run anterior->posterior,
  columns superior->inferior, slices right->left);
- ``enhanced``: a 3D 1 mm axial acquisition stored as one Enhanced MR multi-frame file.

The field of view is centred on the head with a random offset of up to 10 mm; the head
itself gets a small random pose (rotation up to 4 degrees, size 0.95-1.05), so no two
patients share the template's exact voxel positions. The acquisition plane itself is never
tilted (a tilted plane is an error case for the loader, not a phantom feature).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

__all__ = ["GEOMETRIES", "Grid", "HeadPose", "point3", "sample_grid", "sample_pose"]

GEOMETRIES = ("axial2d", "axial3d", "sagittal3d", "enhanced")

_HEAD_CENTRE_LPS = np.array([0.0, 18.0, 12.0])  # centre of the MNI brain, LPS mm
_AXIAL = np.eye(3)
# columns: row direction (+y, posterior), column direction (-z, inferior), slice normal (-x, right)
_SAGITTAL = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def point3(values: Iterable[float]) -> tuple[float, float, float]:
    """The three values as a float (x, y, z) tuple."""
    x, y, z = (float(v) for v in values)
    return x, y, z


@dataclass(frozen=True)
class Grid:
    """Voxel grid of one acquisition. Index (i, j, k): i along a row, j down a column, k slices."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]  # (column spacing, row spacing, slice spacing) in mm
    origin: tuple[float, float, float]  # centre of voxel (0, 0, 0), LPS mm
    direction: tuple[float, ...]  # 3x3 row-major, columns = i, j, k axes (SimpleITK convention)
    slice_thickness: float
    plane: str  # "axial" | "sagittal"

    @property
    def matrix(self) -> np.ndarray:
        """3x3 direction matrix, columns = unit vectors of the i, j, k axes."""
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def reference(self) -> sitk.Image:
        """An empty SimpleITK image carrying this grid."""
        image = sitk.Image([int(v) for v in self.size], sitk.sitkUInt8)
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """Patient points (N, 3) of continuous indices (N, 3) in (i, j, k) order."""
        scaled = np.asarray(ijk, dtype=np.float64) * np.asarray(self.spacing)
        points: np.ndarray = scaled @ self.matrix.T + np.asarray(self.origin)
        return points

    def lps_to_index(self, points: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices (N, 3) of patient points (N, 3)."""
        shifted = np.asarray(points, dtype=np.float64) - np.asarray(self.origin)
        indices: np.ndarray = shifted @ self.matrix / np.asarray(self.spacing)
        return indices

    def slice_position(self, k: int) -> tuple[float, float, float]:
        """ImagePositionPatient of slice k (centre of its first transmitted voxel)."""
        return point3(self.index_to_lps(np.array([[0.0, 0.0, float(k)]]))[0])


@dataclass(frozen=True)
class HeadPose:
    """Affine from patient space to template space: q = matrix @ (p - centre) + centre + shift."""

    matrix: tuple[float, ...]  # 3x3 row-major
    shift: tuple[float, float, float]

    def to_template(self, points: np.ndarray) -> np.ndarray:
        """Template-space points (N, 3) of patient points (N, 3)."""
        m = np.asarray(self.matrix).reshape(3, 3)
        centred = np.asarray(points, dtype=np.float64) - _HEAD_CENTRE_LPS
        template: np.ndarray = centred @ m.T + _HEAD_CENTRE_LPS + np.asarray(self.shift)
        return template

    def to_patient(self, points: np.ndarray) -> np.ndarray:
        """Patient points (N, 3) of template-space points (N, 3)."""
        m = np.asarray(self.matrix).reshape(3, 3)
        q = np.asarray(points, dtype=np.float64) - _HEAD_CENTRE_LPS - np.asarray(self.shift)
        patient: np.ndarray = q @ np.linalg.inv(m).T + _HEAD_CENTRE_LPS
        return patient

    @property
    def volume_scale(self) -> float:
        """Patient volume per template volume (1 / det of the patient->template matrix)."""
        return float(1.0 / abs(np.linalg.det(np.asarray(self.matrix).reshape(3, 3))))

    def transform(self) -> sitk.AffineTransform:
        """The SimpleITK resampling transform (output = patient point -> input = template point)."""
        t = sitk.AffineTransform(3)
        t.SetMatrix(self.matrix)
        t.SetCenter(tuple(float(v) for v in _HEAD_CENTRE_LPS))
        t.SetTranslation(self.shift)
        return t


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    mx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    my = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    mz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rotation: np.ndarray = mz @ my @ mx
    return rotation


def sample_pose(rng: np.random.Generator) -> HeadPose:
    """A random head pose: rotation up to 4 degrees about each axis, isotropic size 0.95-1.05."""
    angles = np.deg2rad(rng.uniform(-4.0, 4.0, size=3))
    size = rng.uniform(0.95, 1.05)
    matrix = _rotation(*angles) / size
    shift = rng.uniform(-3.0, 3.0, size=3)
    return HeadPose(matrix=tuple(float(v) for v in matrix.ravel()), shift=point3(shift))


def sample_grid(geometry: str, rng: np.random.Generator) -> Grid:
    """A random acquisition grid of the given protocol around the head."""
    offset = np.append(rng.uniform(-10.0, 10.0, size=2), rng.uniform(-4.0, 4.0))
    if geometry == "axial2d":
        fov = rng.uniform(220.0, 240.0)
        n = 256
        thickness = 5.0
        nz = int(rng.integers(28, 33))
        spacing = (fov / n, fov / n, thickness)
        size = (n, n, nz)
        direction = _AXIAL
    elif geometry in ("axial3d", "enhanced"):
        n = 240 if geometry == "axial3d" else 224
        nz = int(rng.integers(150, 161)) if geometry == "axial3d" else int(rng.integers(144, 153))
        thickness = 1.0
        spacing = (1.0, 1.0, 1.0)
        size = (n, n, nz)
        direction = _AXIAL
    elif geometry == "sagittal3d":
        thickness = 1.0
        spacing = (1.0, 1.0, 1.0)
        size = (240, 224, int(rng.integers(156, 165)))  # (A->P, S->I, R->L)
        direction = _SAGITTAL
    else:
        raise ValueError(f'Argument "geometry" must be one of {", ".join(GEOMETRIES)}, not {geometry!r}')
    centre = _HEAD_CENTRE_LPS + offset
    half = (np.asarray(size) - 1) * np.asarray(spacing) / 2.0
    origin = centre - direction @ half
    return Grid(
        size=size,
        spacing=point3(spacing),
        origin=point3(origin),
        direction=tuple(float(v) for v in direction.ravel()),
        slice_thickness=float(thickness),
        plane="sagittal" if geometry == "sagittal3d" else "axial",
    )
