"""Every parameter of the preprocessing recipe, in one frozen object a model bundle records.

Haim et al. 2022, "Image analysis / Preprocessing" and "DL analysis": bias field
correction, z-score inside the brain-extracted image, the mid-tumour slice and +-2
neighbours, crops around the lesion mask resized to 96x96. Where the paper is silent the
value is a documented default here (see ``../shared/METHOD.md``). Training and the node
build the model input from the same ``PreprocessParams``: a bundle stores ``to_dict()``
and the node rebuilds it with ``from_dict()`` (train/serve skew is a defect).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline.settings import check_bool, check_choice, check_int, check_known, check_number

__all__ = [
    "PreprocessParams",
    "BRAIN_MASK_METHODS",
    "BRAIN_MASK_FALLBACKS",
    "SLICE_EDGE_POLICIES",
    "CROP_EXTENTS",
    "CROP_PAD_MODES",
    "INTERPOLATIONS",
]

BRAIN_MASK_METHODS = ("otsu_chain", "segment")
BRAIN_MASK_FALLBACKS = ("otsu_chain", "error")
SLICE_EDGE_POLICIES = ("error", "replicate")
CROP_EXTENTS = ("lesion", "slices")
CROP_PAD_MODES = ("air", "edge", "constant")
INTERPOLATIONS = ("linear", "nearest")


@dataclass(frozen=True)
class PreprocessParams:
    """The preprocessing recipe (Haim et al. 2022, "Preprocessing"; DESIGN.md "Model bundle").

    Bias field (the paper used SPM; SimpleITK N4 is the documented open equivalent):

    - ``bias_correction``: run N4 at all (True; the paper always corrects).
    - ``n4_shrink_spacing_mm``: N4 is estimated on the image shrunk, per axis, by the
      integer factor ``max(1, round(n4_shrink_spacing_mm / spacing))``; a 5 mm slice axis
      stays unshrunk. A voxel size rather than a fixed factor keeps the bias-field
      resolution the same for every acquisition. Default 4.0 mm: the customary factor 4
      (ANTs, Slicer; ../shared/METHOD.md) on a 1 mm volume. Measured on a 240x240x153 1 mm
      phantom, 2 quiet cores (tests/bench_preprocess.py): 4 mm -> N4 2.7 s, whole step 3.1 s;
      6 mm -> N4 1.3 s, 1.6 s, with a slightly larger residual of the known field (log-field
      SD 0.003 vs 0.002, against 0.06 before). 6.0 is the option for a loaded machine.
    - ``n4_box_margin_mm``: N4 is estimated only on the bounding box of the brain mask plus
      this margin (measured: 40% less N4 time on a 256x256x176 1 mm head than the whole
      field of view). The log bias field is evaluated at full resolution on that box
      (``GetLogBiasFieldAsImage``) and continued outside it by its edge values; the image
      is divided by ``exp(log field)``.
    - ``n4_levels`` x ``n4_iterations``: fitting levels and iterations per level (4 x 50).
    - ``n4_convergence``: convergence threshold (0.001). ``n4_histogram_bins``: 200.
    - ``n4_control_points``: initial B-spline control points per axis (4, ITK's default).

    Brain mask (for the z-score statistics):

    - ``brain_mask_method``: ``"otsu_chain"`` (Otsu -> erode -> largest component ->
      dilate -> fill holes; needs no downloaded weights) or ``"segment"`` (the brain
      segment supplied in the SEG, ``LoadedStudy.brain``).
    - ``brain_mask_fallback``: when ``"segment"`` is asked for and the study has none:
      ``"otsu_chain"`` or ``"error"``.
    - ``brain_mask_spacing_mm``: the Otsu chain runs on the image shrunk to about this voxel
      size, then goes back to the image grid by nearest neighbour (Dice 0.99 against the
      full-resolution chain, 6x faster).
    - ``brain_erode_mm`` / ``brain_dilate_mm``: ball radii of the erosion and dilation.

    The same brain mask is the N4 estimation mask. z-score: ``(x - mean) / sd`` with the
    mean and population SD of the bias-corrected image inside the brain mask.

    Lesion: ``min_lesion_diameter_mm`` (3.0): a mask with fewer voxels than a sphere of this
    diameter holds at the series' spacing is refused (a stray voxel or a mark is not a lesion
    the model can read; 14 voxels at 1 mm, 2 at 1 x 1 x 5 mm), and so is a lesion touching the
    series' edge (the field of view cut it).

    Slices and crop:

    - ``slice_offset``: the mid-lesion axial slice (through the lesion centroid) and
      ``+-slice_offset`` neighbours, i.e. ``2 * slice_offset + 1`` slices (2 -> 5).
    - ``slice_edge_policy``: a lesion too close to the first/last slice for all neighbours:
      ``"error"`` (PreprocessError, default: such a lesion is usually cut by the field of
      view) or ``"replicate"`` (repeat the edge slice; recorded in the provenance).
    - ``crop_extent``: the in-plane bounding box the crop must hold: of the whole lesion
      (``"lesion"``, default; does not depend on the slice thickness) or of the lesion on
      the chosen slices only (``"slices"``).
    - ``crop_margin_mm``: margin added on every side of that box.
    - ``crop_min_side_mm``: smallest side of the square (0: no minimum).
      The square is centred on the lesion centroid voxel, its half side the largest
      distance from the centroid to the box edge plus the margin: the same box in every
      slice.
    - ``crop_pad_mode``: voxels of the box outside the image: ``"air"`` (the z-score of
      raw intensity 0, i.e. what lies outside the field of view), ``"edge"`` (repeat the
      border voxels) or ``"constant"`` (``crop_pad_value``, in z-score units).
    - ``output_size``: side of the resized square (96, the paper). ``interpolation``:
      ``"linear"`` (pixel-area aligned, like ``align_corners=False``) or ``"nearest"``.
    - ``channels``: the one grey slice repeated to this many channels (3, for an ImageNet
      ResNet-50).
    """

    bias_correction: bool = True
    n4_shrink_spacing_mm: float = 4.0
    n4_box_margin_mm: float = 10.0
    n4_levels: int = 4
    n4_iterations: int = 50
    n4_convergence: float = 0.001
    n4_histogram_bins: int = 200
    n4_control_points: int = 4
    brain_mask_method: str = "otsu_chain"
    brain_mask_fallback: str = "otsu_chain"
    brain_mask_spacing_mm: float = 2.0
    brain_erode_mm: float = 3.0
    brain_dilate_mm: float = 3.0
    min_lesion_diameter_mm: float = 3.0
    slice_offset: int = 2
    slice_edge_policy: str = "error"
    crop_extent: str = "lesion"
    crop_margin_mm: float = 10.0
    crop_min_side_mm: float = 0.0
    crop_pad_mode: str = "air"
    crop_pad_value: float = 0.0
    output_size: int = 96
    interpolation: str = "linear"
    channels: int = 3

    def __post_init__(self) -> None:
        _check_bool("bias_correction", self.bias_correction)
        _check_number("n4_shrink_spacing_mm", self.n4_shrink_spacing_mm, minimum=0.0, strict=True)
        _check_number("n4_box_margin_mm", self.n4_box_margin_mm, minimum=0.0)
        _check_int("n4_levels", self.n4_levels, minimum=1)
        _check_int("n4_iterations", self.n4_iterations, minimum=1)
        _check_number("n4_convergence", self.n4_convergence, minimum=0.0)
        _check_int("n4_histogram_bins", self.n4_histogram_bins, minimum=2)
        _check_int("n4_control_points", self.n4_control_points, minimum=4)
        _check_choice("brain_mask_method", self.brain_mask_method, BRAIN_MASK_METHODS)
        _check_choice("brain_mask_fallback", self.brain_mask_fallback, BRAIN_MASK_FALLBACKS)
        _check_number("brain_mask_spacing_mm", self.brain_mask_spacing_mm, minimum=0.0, strict=True)
        _check_number("brain_erode_mm", self.brain_erode_mm, minimum=0.0)
        _check_number("brain_dilate_mm", self.brain_dilate_mm, minimum=0.0)
        _check_number("min_lesion_diameter_mm", self.min_lesion_diameter_mm, minimum=0.0)
        _check_int("slice_offset", self.slice_offset, minimum=0)
        _check_choice("slice_edge_policy", self.slice_edge_policy, SLICE_EDGE_POLICIES)
        _check_choice("crop_extent", self.crop_extent, CROP_EXTENTS)
        _check_number("crop_margin_mm", self.crop_margin_mm, minimum=0.0)
        _check_number("crop_min_side_mm", self.crop_min_side_mm, minimum=0.0)
        _check_choice("crop_pad_mode", self.crop_pad_mode, CROP_PAD_MODES)
        _check_number("crop_pad_value", self.crop_pad_value)
        _check_int("output_size", self.output_size, minimum=8)
        _check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        _check_int("channels", self.channels, minimum=1)

    @property
    def slice_count(self) -> int:
        """Number of slices per study: the mid-lesion slice and its neighbours."""
        return 2 * self.slice_offset + 1

    def describe(self) -> list[str]:
        """What the preprocessing does, one line per step, in words (the reports' generated
        "Preprocessing" section, ``egfr-node evaluate``'s and the SR's parameters)."""
        if self.bias_correction:
            bias = (f"N4 on (SimpleITK; estimated on the brain box + {self.n4_box_margin_mm:g} mm shrunk to "
                    f"{self.n4_shrink_spacing_mm:g} mm voxels, {self.n4_levels} levels x {self.n4_iterations} iterations)")
        else:
            bias = "N4 off (no bias field correction)"
        brain = ("the brain segment supplied with the mask" + (", else the Otsu chain" if self.brain_mask_fallback == "otsu_chain" else "")
                 if self.brain_mask_method == "segment" else
                 f"an Otsu chain (Otsu, erode {self.brain_erode_mm:g} mm, largest component, dilate {self.brain_dilate_mm:g} mm, "
                 f"fill holes; at {self.brain_mask_spacing_mm:g} mm)")
        extent = "the whole lesion" if self.crop_extent == "lesion" else "the lesion on the chosen slices"
        return [
            f"Bias field: {bias}.",
            f"Normalisation: z-score with the mean and SD inside the brain mask, {brain}.",
            f"Slices: the mid-lesion axial slice and +-{self.slice_offset} ({self.slice_count} slices); at the volume's "
            f"edge: {'refused' if self.slice_edge_policy == 'error' else 'the edge slice repeated'}.",
            f"Crop: one square around {extent} + {self.crop_margin_mm:g} mm margin"
            + (f" (at least {self.crop_min_side_mm:g} mm)" if self.crop_min_side_mm else "")
            + f", resized to {self.output_size} px ({self.output_size}x{self.output_size}, {self.interpolation}); "
            f"outside the image: {self.crop_pad_mode}.",
            f"Channels: the grey slice repeated to {self.channels}.",
        ]

    def deviations_from_paper(self) -> list[str]:
        """Where this preprocessing differs from Haim et al. 2022 ("Preprocessing", "DL analysis")."""
        out = ["Bias field: " + ("SimpleITK N4 instead of SPM (MATLAB)" if self.bias_correction
                                 else "none (N4 off); the paper corrected it with SPM") + "."]
        out.append("Brain extraction: " + ("the supplied brain segment" if self.brain_mask_method == "segment"
                                            else "a classical Otsu chain") + "; the paper does not name its method.")
        if self.output_size != 96:
            out.append(f"Crop size: {self.output_size} px; the paper resized to 96 px.")
        if self.slice_offset != 2:
            out.append(f"Slices: +-{self.slice_offset}; the paper used the mid-tumour slice +-2.")
        out.append("Crop margin: " + f"{self.crop_margin_mm:g} mm around the lesion; the paper does not state its margin.")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict of every parameter (the model bundle's ``preprocessing``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PreprocessParams:
        """Rebuild from ``to_dict()`` output; unknown keys are an error, missing keys default."""
        check_known("preprocessing", values, [f.name for f in dataclasses.fields(cls)])
        return cls(**values)


def _key(name: str) -> str:
    return f"preprocessing.{name}"


def _check_bool(name: str, value: Any) -> None:
    check_bool(_key(name), value)


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    check_int(_key(name), value, minimum)


def _check_number(name: str, value: Any, *, minimum: float | None = None, strict: bool = False) -> None:
    check_number(_key(name), value, minimum, strict=strict)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    check_choice(_key(name), value, choices)
