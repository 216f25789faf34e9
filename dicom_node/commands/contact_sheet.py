"""``crops.png``: the five model-input crops side by side with the lesion outline.

So that a person sees at a glance what the model will look at (issue 3 point 5; the paper
notes "All extracted samples were manually reviewed"). A matplotlib ``Figure`` rendered
by Agg without pyplot: no display needed, the host's backend is left alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_contact_sheet"]


def write_contact_sheet(
    array: np.ndarray,
    lesion_mask: np.ndarray | None,
    provenance: dict[str, Any],
    path: Path,
) -> Path:
    """Write a PNG of ``array[:, 0]`` (z-scored crops) with the 0.5 contour of ``lesion_mask``.

    Each panel is titled with its slice index k and z in mm; the figure title carries the
    study UID, crop side and lesion volume. Grey levels span z-scores -2..+4 for every
    panel, so panels compare.
    """
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the backend alone

    slices = provenance.get("slices", {})
    ks = slices.get("indices", list(range(array.shape[0])))
    zs = slices.get("z_mm", [float("nan")] * array.shape[0])
    mid = slices.get("mid")
    n = array.shape[0]
    vmin, vmax = -3.0, max(3.0, float(np.percentile(array[:, 0], 99.5)))
    fig = Figure(figsize=(2.2 * n, 2.75), dpi=100)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for idx, ax in enumerate(axes):
        ax.imshow(array[idx, 0], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
        if lesion_mask is not None and float(lesion_mask[idx].max()) > 0.5:
            ax.contour(lesion_mask[idx], levels=[0.5], colors=["#ff3b30"], linewidths=0.9)
        label = f"k={ks[idx]}  z={zs[idx]:.1f} mm"
        if ks[idx] == mid:
            label += " (mid)"
        ax.set_title(label, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    box = provenance.get("crop_box", {})
    lesion = provenance.get("lesion", {})
    side = box.get("side_mm", [float("nan")])[0]
    fig.suptitle(
        f"study {provenance.get('study_uid', '?')}\n"
        f"crop {side:.1f} mm -> {array.shape[-1]} px, lesion {lesion.get('volume_cm3', float('nan')):.2f} cm3, "
        f"window z {vmin:.0f}..{vmax:.1f}, red: lesion mask",
        fontsize=8,
    )
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.74, wspace=0.05)
    path = Path(path)
    fig.savefig(path, format="png")
    return path
