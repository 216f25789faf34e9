"""Contrast-enhancing brain metastases: an analytic lesion model and the EGFR effect on it.

A lesion is a lobulated ellipsoid in template space. For a point q its normalised radius is
``rho = |S^-1 R^T (q - c)| / (1 + irregularity * g(u))`` with ``u`` the direction from the
centre and ``g`` a smooth random function on the sphere (unit variance). ``rho <= 1`` is the
lesion (what a neurosurgeon outlines: enhancing rim and necrotic core together); inside it,
an enhancing rim of relative thickness ``rim`` (itself varying around the lesion by
``rim_irregularity``), a solid enhancing part with a multiplicative texture of relative SD
``heterogeneity``, and a necrotic core (``rho < core``) about as dark as CSF. Outside it,
vasogenic edema darkens white matter over ``edema_mm``.

Relative intensities (white matter = 1.0): rim 1.55, solid tumour 1.2, necrosis 0.35,
edema down to 0.7 x white matter.

EGFR effect (``effect_size`` s in [0, 1]; 0 = the label carries no signal). An EGFR-positive
lesion draws each parameter around ``negative + s * (positive - negative)`` of these means;
a negative lesion draws around the negative mean. The spread between lesions is the same for
both groups, so at moderate s the groups overlap, as real ones do:

=====================  ========  ========  ======
parameter              negative  positive  SD
=====================  ========  ========  ======
rim (fraction of r)    0.30      0.16      0.05    thinner rim
rim_irregularity       0.30      0.60      0.15    more irregular rim
irregularity           0.08      0.15      0.03    more lobulated outline
lobulation frequency   3.0       4.5       0.8     finer lobules
core (fraction of r)   0.50      0.22      0.12    smaller necrotic core
heterogeneity (SD)     0.06      0.18      0.04    more heterogeneous enhancement
edema_mm               10        5         2.5     less edema
volume cm3 (median)    1.21      0.96      -       paper Table 1
P(cerebellar)          0.14      0.25      -       paper Table 1
P(posterior cerebral)  0.15      0.30      -       parietal/occipital
=====================  ========  ========  ======

All of these show in the mid-lesion axial slice and its neighbours (the paper's model input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.phantom.anatomy import HeadModel

__all__ = ["EFFECT_TABLE", "Lesion", "sample_lesion", "sample_satellite"]

# parameter: (negative mean, positive mean, spread SD shared by both groups)
EFFECT_TABLE: dict[str, tuple[float, float, float]] = {
    "rim": (0.30, 0.16, 0.05),
    "rim_irregularity": (0.30, 0.60, 0.15),
    "irregularity": (0.08, 0.15, 0.03),
    "lobulation": (3.0, 4.5, 0.8),
    "core": (0.50, 0.22, 0.12),
    "heterogeneity": (0.06, 0.18, 0.04),
    "edema_mm": (10.0, 5.0, 2.5),
    "volume_cm3": (1.21, 0.96, 0.0),
    "p_cerebellar": (0.14, 0.25, 0.0),
    "p_posterior": (0.15, 0.30, 0.0),
}

RIM_VALUE, SOLID_VALUE, NECROSIS_VALUE, EDEMA_DROP = 1.55, 1.2, 0.35, 0.3


def _smoothstep(x: np.ndarray) -> np.ndarray:
    t = np.clip(x, 0.0, 1.0)
    smooth: np.ndarray = t * t * (3.0 - 2.0 * t)
    return smooth


@dataclass(frozen=True)
class _Waves:
    """Sum of random plane waves: a smooth random function with unit variance."""

    vectors: np.ndarray  # (K, 3) wave vectors
    phases: np.ndarray  # (K,)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        waves: np.ndarray = np.sqrt(2.0 / len(self.phases)) * np.cos(x @ self.vectors.T + self.phases).sum(axis=1)
        return waves


def _waves(rng: np.random.Generator, count: int, frequency: float) -> _Waves:
    vectors = rng.standard_normal((count, 3))
    vectors *= (frequency * rng.uniform(0.7, 1.3, count) / np.linalg.norm(vectors, axis=1))[:, None]
    return _Waves(vectors=vectors, phases=rng.uniform(0.0, 2.0 * np.pi, count))


@dataclass(frozen=True)
class Lesion:
    """One metastasis in template space (mm, LPS)."""

    centre: np.ndarray  # (3,)
    rotation: np.ndarray  # (3, 3) columns = ellipsoid axes
    radii: np.ndarray  # (3,) mm
    rim: float
    rim_irregularity: float
    irregularity: float
    core: float
    heterogeneity: float
    edema_mm: float
    outline: _Waves  # on unit directions
    rim_pattern: _Waves  # on unit directions
    texture: _Waves  # on mm positions
    region: str

    def rho(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised radius (N,) and unit direction (N, 3) of template points q (N, 3)."""
        local = (np.asarray(q, dtype=np.float64) - self.centre) @ self.rotation / self.radii
        norm = np.linalg.norm(local, axis=1)
        u = local / np.maximum(norm, 1e-9)[:, None]
        scale = np.clip(1.0 + self.irregularity * self.outline(u), 0.6, 1.5)
        return norm / scale, u

    def inside(self, q: np.ndarray) -> np.ndarray:
        """Lesion membership (the mask a neurosurgeon draws) of template points."""
        return self.rho(q)[0] <= 1.0

    def render(self, q: np.ndarray, background: np.ndarray, wm: np.ndarray) -> np.ndarray:
        """Relative T1+c intensity at template points q given the healthy background there."""
        rho, u = self.rho(q)
        r_mm = float(self.radii.mean())
        edge = 0.6 / r_mm  # soft edge half-width, in rho units
        outside_mm = np.maximum(rho - 1.0, 0.0) * r_mm
        edema = 1.0 - EDEMA_DROP * np.clip(wm + 0.3, 0.0, 1.0) * np.exp(-outside_mm / max(self.edema_mm, 0.5))
        result = background * edema
        near = rho < 1.0 + edge
        if not near.any():
            return result
        rho, u, qn = rho[near], u[near], q[near]
        rim = np.clip(self.rim * (1.0 + self.rim_irregularity * self.rim_pattern(u)), 0.05, 0.6)
        texture = self.texture(qn)
        solid = SOLID_VALUE * (1.0 + self.heterogeneity * texture)
        rim_w = _smoothstep((rho - (1.0 - rim) + edge) / (2 * edge))
        rim_value = RIM_VALUE * (1.0 + 0.5 * self.heterogeneity * self.texture(qn[:, ::-1]))
        tumour = solid + (rim_value - solid) * rim_w
        if self.core > 0:
            core_w = _smoothstep((self.core - rho + edge) / (2 * edge))
            tumour = tumour + (NECROSIS_VALUE * (1.0 + 0.3 * self.heterogeneity * texture) - tumour) * core_w
        alpha = _smoothstep((1.0 - rho + edge) / (2 * edge))
        result[near] = alpha * tumour + (1.0 - alpha) * result[near]
        return result

    def extent_mm(self) -> float:
        """Distance from the centre beyond which no point is inside the lesion."""
        return float(self.radii.max() * 1.5)

    def reach_mm(self) -> float:
        """Distance from the centre beyond which the lesion and its edema no longer matter."""
        return float(self.radii.max() * (1.0 + 3.0 * self.irregularity) + 2.5 * self.edema_mm)


def _param(name: str, positive: bool, effect_size: float, rng: np.random.Generator) -> float:
    negative_mean, positive_mean, sd = EFFECT_TABLE[name]
    mean = negative_mean + (effect_size * (positive_mean - negative_mean) if positive else 0.0)
    return float(mean + sd * rng.standard_normal())


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.diag(r))


def _place(head: HeadModel, region: str, reach: float, rng: np.random.Generator,
           avoid: np.ndarray | None) -> np.ndarray:
    """A centre at the grey-white junction, deep enough in the brain, in the asked region."""
    lps = head.junction_lps[head.junction_depth_mm >= reach]
    cerebellar = (lps[:, 2] < -18.0) & (lps[:, 1] > 40.0) & (lps[:, 2] > -50.0)
    posterior = (lps[:, 1] > 25.0) & (lps[:, 2] >= -18.0)
    regions = {"cerebellar": cerebellar, "posterior": posterior, "anywhere": lps[:, 2] > -50.0}
    wanted = regions.get(region, ~cerebellar & ~posterior & (lps[:, 2] > -30.0))
    wanted &= lps[:, 2] < 70.0
    if avoid is not None:
        wanted &= np.linalg.norm(lps - avoid, axis=1) > 30.0
    candidates = lps[wanted] if wanted.any() else lps
    centre: np.ndarray = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
    return centre


def _build(head: HeadModel, rng: np.random.Generator, params: dict[str, float], volume_cm3: float, region: str,
           avoid: np.ndarray | None) -> Lesion:
    axes = np.exp(rng.uniform(-0.15, 0.15, 3))
    radius = (3.0 * volume_cm3 * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    # E[(1 + e g)^3] ~ 1 + 3 e^2 for unit-variance g: keep the expected volume on target.
    radius /= (1.0 + 3.0 * params["irregularity"] ** 2) ** (1.0 / 3.0)
    radii = radius * axes / np.prod(axes) ** (1.0 / 3.0)
    lesion_reach = float(radii.max() * 1.5 + 4.0)
    return Lesion(
        centre=_place(head, region, lesion_reach, rng, avoid),
        rotation=_random_rotation(rng),
        radii=radii,
        rim=float(np.clip(params["rim"], 0.06, 0.5)),
        rim_irregularity=float(np.clip(params["rim_irregularity"], 0.0, 0.9)),
        irregularity=float(np.clip(params["irregularity"], 0.0, 0.3)),
        core=float(np.clip(params["core"], 0.0, 0.8)),
        heterogeneity=float(np.clip(params["heterogeneity"], 0.0, 0.35)),
        edema_mm=float(np.clip(params["edema_mm"], 1.0, 20.0)),
        outline=_waves(rng, 10, float(np.clip(params["lobulation"], 1.5, 8.0))),
        rim_pattern=_waves(rng, 10, 3.0),
        texture=_waves(rng, 16, 2.0 * np.pi / rng.uniform(3.0, 6.0)),
        region=region,
    )


def sample_lesion(head: HeadModel, rng: np.random.Generator, *, egfr_positive: bool, effect_size: float) -> Lesion:
    """The resected metastasis of one patient, drawn for its EGFR label (see the module table)."""
    params = {name: _param(name, egfr_positive, effect_size, rng) for name in EFFECT_TABLE}
    # Log-normal volume (SD of log 0.45), clipped to the paper's observed range.
    volume = float(np.clip(params["volume_cm3"] * np.exp(0.45 * rng.standard_normal()), 0.5, 3.0))
    u = rng.uniform()
    region = "cerebellar" if u < params["p_cerebellar"] else (
        "posterior" if u < params["p_cerebellar"] + params["p_posterior"] else "anterior")
    return _build(head, rng, params, volume, region, None)


def sample_satellite(head: HeadModel, rng: np.random.Generator, main: Lesion) -> Lesion:
    """A second, small, solidly enhancing metastasis at least 30 mm from the main one."""
    params = {name: EFFECT_TABLE[name][0] for name in EFFECT_TABLE}
    params.update(core=0.0, rim=0.45, heterogeneity=0.05, edema_mm=3.0)
    volume = float(rng.uniform(0.08, 0.3))
    return _build(head, rng, params, volume, "anywhere", main.centre)
