"""Content builders of the node's result objects, no I/O (shared/SR.md):

- :func:`build_sr`: the EGFR result as a TID 1500 Comprehensive (3D) SR;
- :func:`seg_from_volume_mask`: an RTSTRUCT lesion, rasterised on the volume grid, as a SEG
  the SR can reference;
- :func:`build_result_card`: the Secondary Capture companion picture.
"""

from dicom_node.report.result_card import CARD_SERIES_DESCRIPTION, CAVEAT, build_result_card, render_result_card
from dicom_node.report.seg_from_rtstruct import SEG_SERIES_DESCRIPTION, seg_from_volume_mask
from dicom_node.report.sr import SR_SERIES_DESCRIPTION, AlgorithmInfo, LesionFinding, build_sr, set_containers_separate

__all__ = [
    "CARD_SERIES_DESCRIPTION", "CAVEAT", "SEG_SERIES_DESCRIPTION", "SR_SERIES_DESCRIPTION", "AlgorithmInfo",
    "LesionFinding", "build_result_card", "build_sr", "render_result_card", "seg_from_volume_mask",
    "set_containers_separate",
]
