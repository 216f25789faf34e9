"""What the pipeline reads, by SOP Class UID: defined once, here, for the whole node.

Images and masks move the queue (a new one restarts the study's quiet time or makes a new
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
    "QUEUE_SOP_CLASSES",
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


def moves_queue(sop_class_uid: str, origin: str = "received") -> bool:
    """Whether an instance of this class restarts its study's quiet time or makes a job.

    The node's own results (``origin="node"``) never do, whatever their class (the SEG it
    derives from an RTSTRUCT is a SEG).
    """
    return origin == "received" and sop_class_uid in QUEUE_SOP_CLASSES
