"""z-score intensity normalisation (Haim et al. 2022, "Preprocessing").

``normalize(x) = (x_i - mean) / sd`` with the mean and SD "of the brain extracted image":
here the bias-corrected intensities inside the brain mask, population SD (ddof 0),
accumulated in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import PreprocessError

__all__ = ["IntensityStats", "brain_statistics", "zscore"]


@dataclass(frozen=True)
class IntensityStats:
    """Mean and SD of the intensities inside the brain mask, and how many voxels gave them."""

    mean: float
    sd: float
    voxels: int


def brain_statistics(image: np.ndarray, mask: np.ndarray) -> IntensityStats:
    """Mean and population SD of ``image`` where ``mask`` is non-zero (same shape)."""
    if image.shape != mask.shape:
        raise ValueError(f'Argument "mask" must have the shape of the image {image.shape}, got {mask.shape}')
    values = image[mask > 0].astype(np.float64)
    if values.size == 0:
        raise PreprocessError("brain mask is empty: no intensities for the z-score")
    mean = float(values.mean())
    sd = float(values.std())
    if not np.isfinite(mean) or not np.isfinite(sd):
        raise PreprocessError("intensities inside the brain mask are not finite")
    if sd <= 0.0:
        raise PreprocessError("intensities inside the brain mask are constant: SD is 0")
    return IntensityStats(mean=mean, sd=sd, voxels=int(values.size))


def zscore(values: np.ndarray, stats: IntensityStats) -> np.ndarray:
    """``(values - mean) / sd`` as float32."""
    return ((values.astype(np.float64) - stats.mean) / stats.sd).astype(np.float32)
