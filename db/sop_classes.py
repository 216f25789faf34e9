"""What the pipeline reads, by SOP Class UID: defined once, here, for the whole node.

Images and masks (and an SR that outlines a lesion: a mask by its content) move the queue (a new one restarts the study's quiet time or makes a new
job); everything else the node archives (SR, Secondary Capture, PDF, ...) is listed but
never triggers a job. The receive path, the queue's readiness check and the pipeline's
study index all use these sets.
"""

from __future__ import annotations

__all__ = [
    "MR_IMAGE",
    "ENHANCED_MR_IMAGES",
    "IMAGE_SOP_CLASSES",
    "SEG",
    "RTSTRUCT",
    "MASK_SOP_CLASSES",
    "OUTLINE",
    "OUTLINE_SR_CLASSES",
    "QUEUE_SOP_CLASSES",
    "mask_kind_of",
    "moves_queue",
]

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Enhanced MR Image and Legacy Converted Enhanced MR Image (multi-frame).
ENHANCED_MR_IMAGES = frozenset({"1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.4"})
IMAGE_SOP_CLASSES = frozenset({MR_IMAGE, *ENHANCED_MR_IMAGES})
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
MASK_SOP_CLASSES = frozenset({SEG, RTSTRUCT})
QUEUE_SOP_CLASSES = IMAGE_SOP_CLASSES | MASK_SOP_CLASSES
#: SR classes a viewer saves its measurements in (Enhanced, Comprehensive, Comprehensive 3D
#: SR): one is a mask when its content outlines a closed region (``pipeline.load.outline``).
OUTLINE_SR_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
                                "1.2.840.10008.5.1.4.1.1.88.34"})
#: ``mask_kind`` of a viewer outline (an SR measurement report with a closed planar region).
OUTLINE = "OUTLINE"
_KINDS = {SEG: "SEG", RTSTRUCT: "RTSTRUCT"}


def mask_kind_of(sop_class_uid: str, outline: bool = False) -> str | None:
    """``"SEG"``, ``"RTSTRUCT"``, ``"OUTLINE"`` (an SR of ``OUTLINE_SR_CLASSES`` whose content
    outlines a region: ``outline``), or None for anything that is not a lesion mask."""
    if sop_class_uid in _KINDS:
        return _KINDS[sop_class_uid]
    return OUTLINE if outline and sop_class_uid in OUTLINE_SR_CLASSES else None


def moves_queue(sop_class_uid: str, origin: str = "received", mask_kind: str | None = None) -> bool:
    """Whether an instance of this class restarts its study's quiet time or makes a job: an
    image, or a mask (by class, or ``mask_kind`` for a viewer outline).

    The node's own results (``origin="node"``) never do, whatever their class (the SEG it
    derives from an RTSTRUCT is a SEG).
    """
    return origin == "received" and (sop_class_uid in QUEUE_SOP_CLASSES or mask_kind is not None)
