"""A Secondary Capture "result card": the model input and the result as one RGB picture.

OHIF ignores CODE qualitative evaluations and Slicer shows only NUM items (shared/SR.md,
"What viewers show"), so the node can send this companion image, in its own series of
the same study: the S crops fed to the model with the lesion outline, each slice's score,
the probability, the status, the decision threshold and the research-use caveat. The SR
stays the authoritative result. Rendered with matplotlib's Agg canvas on a private Figure
(no pyplot state), so it is safe in worker threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.report._checks import check_real, check_series_number, check_uid
from dicom_node.report.series_time import stamp_series_and_content_time
from dicom_node.report.sr import AlgorithmInfo, probability_words, result_character_set, shown_decimals

__all__ = ["CAVEAT", "CARD_SERIES_DESCRIPTION", "build_result_card", "render_result_card"]

CAVEAT = "Research use only. Not a diagnosis. Internal cross-validation is not external validation."
CARD_SERIES_DESCRIPTION = "EGFR result card RESEARCH USE ONLY - not a diagnosis"

_PANEL_INCHES = 2.2
_DPI = 100


def _check_inputs(crops: object, lesion_mask: object, slice_scores: object) -> tuple[np.ndarray, np.ndarray, list[float]]:
    if not isinstance(crops, np.ndarray):
        raise TypeError(f'Argument "crops" must be a numpy array, not {type(crops).__name__}')
    if not isinstance(lesion_mask, np.ndarray):
        raise TypeError(f'Argument "lesion_mask" must be a numpy array, not {type(lesion_mask).__name__}')
    if crops.ndim != 3 or crops.shape[0] < 1 or min(crops.shape[1:]) < 2:
        raise ValueError(f'Argument "crops" must be [S, H, W] with S >= 1, not shape {crops.shape}')
    if lesion_mask.shape != crops.shape:
        raise ValueError(f'Argument "lesion_mask" must have the shape of "crops" {crops.shape}, not {lesion_mask.shape}')
    crops_f, mask_f = crops.astype(np.float64), lesion_mask.astype(np.float64)
    if not np.isfinite(crops_f).all():
        raise ValueError('Argument "crops" must be finite')
    if not (np.isfinite(mask_f).all() and mask_f.min() >= 0.0 and mask_f.max() <= 1.0):
        raise ValueError('Argument "lesion_mask" must hold values in [0, 1]')
    if isinstance(slice_scores, (str, bytes)) or not isinstance(slice_scores, (Sequence, np.ndarray)):
        raise TypeError(f'Argument "slice_scores" must be a sequence of numbers, not {type(slice_scores).__name__}')
    if len(slice_scores) != crops.shape[0]:
        raise ValueError(f'Argument "slice_scores" must have one score per crop ({crops.shape[0]}), '
                         f'not {len(slice_scores)}')
    scores = [check_real("slice_scores", s, 0.0, 1.0) for s in slice_scores]
    return crops_f, mask_f, scores


def render_result_card(crops: np.ndarray, lesion_mask: np.ndarray, slice_scores: Sequence[float],
                       probability: float, positive: bool, algorithm: AlgorithmInfo, calibrated: bool = False) -> np.ndarray:
    """The card as an RGB uint8 array [rows, columns, 3] (inputs as in :func:`build_result_card`)."""
    crops_f, mask_f, scores = _check_inputs(crops, lesion_mask, slice_scores)
    count = crops_f.shape[0]
    low, high = np.percentile(crops_f, [1.0, 99.5])
    if high <= low:
        high = low + 1.0
    width = max(count * _PANEL_INCHES, 8.0)
    figure = Figure(figsize=(width, _PANEL_INCHES + 2.4), dpi=_DPI, facecolor="black")
    canvas = FigureCanvasAgg(figure)
    panel_h = _PANEL_INCHES / (_PANEL_INCHES + 2.4)
    panel_w = _PANEL_INCHES / width
    left0 = (1.0 - count * panel_w) / 2.0
    bottom = 1.0 - panel_h - 0.5 / (_PANEL_INCHES + 2.4)
    for s in range(count):
        axes = figure.add_axes((left0 + s * panel_w + 0.04 * panel_w, bottom, 0.92 * panel_w, panel_h * 0.92))
        axes.imshow(crops_f[s], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        if mask_f[s].min() < 0.5 < mask_f[s].max():
            axes.contour(mask_f[s], levels=[0.5], colors=["#ff3030"], linewidths=1.2)
        axes.set_axis_off()
        figure.text(left0 + (s + 0.5) * panel_w, bottom - 0.03, f"slice {s + 1}: {scores[s]:.2f}",
                    ha="center", va="top", color="white", fontsize=10)
    status = "predicted EGFR mutation POSITIVE" if positive else "predicted EGFR mutation NEGATIVE"
    figure.text(0.5, 0.985, f"{algorithm.name} {algorithm.version}: EGFR mutation prediction (RESEARCH USE ONLY)",
                ha="center", va="top", color="white", fontsize=12, weight="bold")
    # the number on the side its status says, and told apart from the threshold printed beside it
    decimals = shown_decimals(probability, algorithm.threshold, 2, threshold_beside=True)
    lines = [
        (f"{probability_words(probability, calibrated, decimals).capitalize()})   Status: {status}   "
         f"(decision threshold {algorithm.threshold:.{decimals}f})",
         "#ffd040" if positive else "#80d0ff", 13),
        (f"Slice scores: the fold models' mean network output (not calibrated). Probability: slices by "
         f"{algorithm.slice_aggregation} per model,", "white", 9),
        (f"fold models by {algorithm.fold_aggregation}. Red outline: lesion mask.", "white", 9),
        (CAVEAT, "#ff8080", 11),
    ]
    for top, (text, color, size) in zip((0.30, 0.21, 0.165, 0.09), lines):
        figure.text(0.5, top, text, ha="center", va="top", color=color, fontsize=size)
    canvas.draw()  # type: ignore[no-untyped-call]  # matplotlib's Agg backend is not annotated
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # type: ignore[no-untyped-call]  # Agg is not annotated


def build_result_card(
    source_image: Dataset,
    crops: np.ndarray,
    lesion_mask: np.ndarray,
    slice_scores: Sequence[float],
    probability: float,
    positive: bool,
    algorithm: AlgorithmInfo,
    *,
    sop_instance_uid: str,
    series_instance_uid: str,
    calibrated: bool = False,
    series_number: int = 9903,
    created: datetime | None = None,
) -> Dataset:
    """The result card as a Secondary Capture Image (RGB, 8 bit) in a new series of the study.

    ``crops``: [S, H, W] z-scored model input slices, ``lesion_mask``: [S, H, W] in 0..1 on
    the same pixels, ``slice_scores``: one score per slice (fold-aggregated). Patient and
    study come from ``source_image``. Panels are axial crops in LPS index order, hence
    PatientOrientation L\\P. BodyPartExamined is the source's, else BRAIN: without an
    unpaired body part, dciodvfy asks for Laterality, which the brain does not have.
    """
    if not isinstance(source_image, Dataset):
        raise TypeError(f'Argument "source_image" must be a pydicom Dataset, not {type(source_image).__name__}')
    if not isinstance(algorithm, AlgorithmInfo):
        raise TypeError(f'Argument "algorithm" must be an AlgorithmInfo, not {type(algorithm).__name__}')
    probability = check_real("probability", probability, 0.0, 1.0)
    if not isinstance(positive, bool):
        raise TypeError(f'Argument "positive" must be a bool, not {type(positive).__name__}')
    check_uid("sop_instance_uid", sop_instance_uid)
    check_uid("series_instance_uid", series_instance_uid)
    if series_instance_uid == source_image.get("SeriesInstanceUID"):
        raise ValueError('Argument "series_instance_uid" must be a new series, not that of the source image')
    check_series_number("series_number", series_number)
    pixels = render_result_card(crops, lesion_mask, slice_scores, probability, positive, algorithm, calibrated)
    card = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source_image,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=algorithm.manufacturer,
        patient_orientation=("L", "P"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        specific_character_set=result_character_set(source_image),
    )
    # the whole Patient and Study modules, as the SR and SEG carry them (from_ref_dataset copies
    # a few: a PACS that qualifies the ID by its issuer would file the card under another patient)
    card.copy_patient_and_study_information(source_image)
    card.SeriesDescription = CARD_SERIES_DESCRIPTION
    card.ImageComments = CAVEAT
    card.BurnedInAnnotation = "YES"
    card.ConversionType = "WSD"  # workstation: rendered, not digitised
    # dciodvfy (dicom3tools) wants Laterality unless an unpaired BodyPartExamined is present.
    card.BodyPartExamined = str(source_image.get("BodyPartExamined") or "BRAIN")
    return stamp_series_and_content_time(card, created)
