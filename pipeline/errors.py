"""Errors that stop a study from going through the pipeline.

Each carries one line a person can act on (``no mask references an MR series``); it names
UIDs, never patient names or IDs. The CLI prints ``str(error)`` and exits non-zero; the
worker stores it as the job's failure reason.
"""

from __future__ import annotations

__all__ = ["PipelineError", "SelectionError", "VolumeError", "MaskError", "PreprocessError", "ContrastError"]


class PipelineError(Exception):
    """A study cannot go through the pipeline."""


class SelectionError(PipelineError):
    """No usable MR series or lesion mask could be chosen in the study."""


class VolumeError(PipelineError):
    """The chosen MR series does not form one regular volume."""


class MaskError(PipelineError):
    """The lesion mask cannot be put on the image grid."""


class PreprocessError(PipelineError):
    """A preprocessing step cannot run on this volume (empty lesion, lesion at the edge, ...)."""


class ContrastError(PipelineError):
    """The chosen series shows no evidence of a contrast agent (the method reads post-contrast T1)."""
