"""The brain mask and N4 bias field of a volume, fitted once and kept (issue 30).

N4 is most of a job on a CPU (3.6-5.1 s of it on two cores) and it does not depend on the
lesion: only on the image, the brain mask and the parameters. A radiologist's mask usually
reaches the node minutes after the images, so the worker fits the field while the study
waits for its mask (:mod:`pipeline.prefit`; a study sent whole, from the mask's arrival), and
the job takes it from here.

The key is the content, not a name: a SHA-256 of the volume's voxels and grid, the brain
segment when the recipe uses one, and every preprocessing parameter. A series that changed
(one more slice, another transfer syntax that decodes to other values), or a bundle with
other parameters, misses the cache and fits its own field, so a job's model input is the
same with or without it. A fit in progress is shared: a job that needs the field being
fitted ahead of it waits for that fit instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from pipeline.prep.bias import BiasCorrection, correct_bias_field
from pipeline.prep.brain import BrainMask, brain_mask
from pipeline.prep.params import PreprocessParams

__all__ = ["BiasFit", "BiasFieldCache", "fit_brain_and_bias", "volume_key"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BiasFit:
    """The brain mask of a volume and its N4 correction (None when the recipe has N4 off)."""

    brain: BrainMask
    bias: BiasCorrection | None

    @property
    def nbytes(self) -> int:
        images = [self.brain.mask] + ([self.bias.corrected, self.bias.log_field] if self.bias else [])
        return sum(image.GetNumberOfPixels() * image.GetSizeOfPixelComponent() for image in images)


def fit_brain_and_bias(image: sitk.Image, segment: sitk.Image | None, params: PreprocessParams,
                       lap: Callable[[str], None] | None = None) -> BiasFit:
    """The recipe's brain mask on ``image`` and, with ``params.bias_correction``, N4 inside it;
    ``lap("brain_mask")`` and ``lap("bias_field")`` after each (:class:`pipeline.timing.Laps`)."""
    brain = brain_mask(image, segment, params)
    if lap is not None:
        lap("brain_mask")
    bias = correct_bias_field(image, brain.mask, params) if params.bias_correction else None
    if lap is not None:
        lap("bias_field")
    return BiasFit(brain, bias)


def volume_key(image: sitk.Image, params: PreprocessParams, segment: sitk.Image | None = None) -> str:
    """What the fit depends on, hashed: the voxels and grid of ``image``, the brain
    ``segment`` when the recipe uses one, and every preprocessing parameter."""
    digest = hashlib.sha256()
    grid = [image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection(), image.GetPixelIDTypeAsString()]
    digest.update(json.dumps({"grid": grid, "params": params.to_dict()}, sort_keys=True, default=str).encode())
    digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(image)).data)
    if segment is not None and params.brain_mask_method == "segment":
        digest.update(b"segment")
        digest.update(np.ascontiguousarray(sitk.GetArrayViewFromImage(segment)).data)
    return digest.hexdigest()


class BiasFieldCache:
    """Fits by :func:`volume_key`, the least recently used dropped beyond ``max_bytes``.
    Thread-safe; one process (a worker's job runners and its idle pre-fit share it)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f'Argument "max_bytes" must not be negative, got {max_bytes}')
        self.max_bytes = max_bytes
        self._fits: OrderedDict[str, BiasFit] = OrderedDict()
        self._fitting: dict[str, Future[BiasFit]] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._fits

    def __len__(self) -> int:
        with self._lock:
            return len(self._fits)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(fit.nbytes for fit in self._fits.values())

    def get_or_fit(self, key: str, fit: Callable[[], BiasFit]) -> tuple[BiasFit, bool]:
        """(the fit, True) when it was kept or is being fitted by another thread (waited for);
        else ``fit()`` is run here, kept, and returned with False. An exception of ``fit``
        reaches its caller; a thread that waited on it fits for itself."""
        with self._lock:
            kept = self._fits.get(key)
            if kept is not None:
                self._fits.move_to_end(key)
                return kept, True
            pending = self._fitting.get(key)
            if pending is None:
                mine: Future[BiasFit] = Future()
                self._fitting[key] = mine
        if pending is not None:
            try:
                return pending.result(), True
            except Exception:  # noqa: BLE001 - the other fit failed: this caller tries for itself
                return fit(), False
        try:
            result = fit()
        except BaseException as exc:
            with self._lock:
                self._fitting.pop(key, None)
            mine.set_exception(exc)
            raise
        with self._lock:
            self._fitting.pop(key, None)
            self._keep(key, result)
        mine.set_result(result)
        return result, False

    def _keep(self, key: str, fit: BiasFit) -> None:
        if fit.nbytes > self.max_bytes:
            return
        self._fits[key] = fit
        total = sum(f.nbytes for f in self._fits.values())
        while total > self.max_bytes and self._fits:
            _, dropped = self._fits.popitem(last=False)
            total -= dropped.nbytes
