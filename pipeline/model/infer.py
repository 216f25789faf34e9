"""The fold ensemble: K ResNet-50s scoring one study's slices together.

DESIGN.md data flow, ``pipeline.model.infer``: the ``[S, C, H, W]`` input (``[5, 3, 96, 96]``)
goes through all K fold models under ``torch.inference_mode``, one after another on the same
batch, in fp32, on CPU and CUDA alike. ``scores`` returns ``[K, S]``, the probability of the
positive class for every fold and slice; :mod:`pipeline.model.aggregate` turns it into the
patient's probability. On CPU the thread count is the caller's (the node leaves a core to
its SCP).

Two faster paths exist on CUDA and are off by default, because a result must not depend on
the device it was computed on (``tests/bench_infer.py`` measures both on a GPU):

- ``mixed_precision=True``: bf16 autocast with channels_last. On an H200 with 5 trained
  folds it moved a probability by up to 0.69 against fp32 (a noise input); fp32 takes
  15-27 ms per study there, nothing beside the seconds of preprocessing.
- ``batched=True``: the K models' weights stacked (``torch.func.stack_module_state``) and
  run with ``vmap``, one kernel launch per layer for all folds (with bf16: 16.7 ms against
  22.4 ms looped). On CPU vmap turns each convolution into a grouped one, which oneDNN runs
  about 2x slower (0.82 s vmapped against 0.38 s looped for 5 folds x 5 slices, 2 cores).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, stack_module_state

from pipeline.model.aggregate import is_positive, served_probability
from pipeline.model.bundle import BundleError, Manifest
from pipeline.model.network import EGFRNet, build_resnet50, head_of

__all__ = ["FoldEnsemble", "Prediction", "load_fold_weights", "check_bundle"]

log = logging.getLogger(__name__)


def load_fold_weights(path: Path, normalization: str, architecture: str = "resnet50") -> EGFRNet:
    """One fold's network from its ``state_dict`` file (``weights_only=True``: no code unpickled)."""
    model = build_resnet50(normalization=normalization, head=head_of(architecture))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:  # pickle, zip and shape errors all mean "not this network's weights"
        raise BundleError(f"{Path(path).name} is not a state_dict of this network: {type(exc).__name__}") from None
    return model.eval()


def check_bundle(folder: Path) -> Manifest:
    """The manifest checked (runnable, every sha256), then each fold loaded once, weights only,
    and let go: BundleError naming the fold file that is not this network's weights. What
    registering or activating a bundle checks, from the node or from training."""
    folder = Path(folder)
    manifest = Manifest.load_checked(folder)
    for fold in sorted(manifest.folds, key=lambda f: f.fold):
        try:
            load_fold_weights(folder / fold.file, manifest.normalization, manifest.architecture)
        except BundleError as exc:
            raise BundleError(f"fold {fold.fold}: {exc}") from None
    return manifest


@dataclass(frozen=True)
class Prediction:
    """One study's answer under the bundle's served rule: fold x slice scores, the
    probability (calibrated when the bundle carries a calibration), the uncalibrated score
    combined the same way, each fold's probability, and the status."""

    scores: np.ndarray  # [K, S]
    probability: float
    positive: bool
    raw_score: float = float("nan")
    fold_probabilities: np.ndarray | None = None

    @property
    def slice_scores(self) -> np.ndarray:
        """Mean over folds per slice (for display on the result card)."""
        mean: np.ndarray = self.scores.mean(axis=0)
        return mean


class FoldEnsemble:
    """K fold models of one bundle, ready to score (``FoldEnsemble.load(folder, manifest)``)."""

    def __init__(
        self, manifest: Manifest, models: list[EGFRNet], device: torch.device | str = "cpu", batched: bool | None = None,
        mixed_precision: bool | None = None,
    ) -> None:
        if not models:
            raise ValueError('Argument "models" must hold at least one fold model')
        self.manifest = manifest
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        #: bf16 autocast with channels_last weights and input (CUDA only, opt-in: see the
        #: module docstring; cuDNN's fp32 batch norm cannot run channels_last under vmap).
        self.mixed_precision = self.cuda and bool(mixed_precision)
        #: All folds in one vmapped call (opt-in; by default with mixed precision only, the
        #: combination measured on a GPU).
        self.batched = self.mixed_precision if batched is None else batched
        layout = torch.channels_last if self.mixed_precision else torch.contiguous_format
        self.models = [m.to(self.device).to(memory_format=layout).eval() for m in models]
        if self.batched:
            self._params, self._buffers = stack_module_state(self.models)
            # A weightless copy of the architecture to call with the stacked tensors.
            self._skeleton = copy.deepcopy(self.models[0]).to("meta")

    @classmethod
    def load(cls, folder: Path, manifest: Manifest | None = None, device: torch.device | str = "cpu") -> FoldEnsemble:
        """Load a bundle's folds; the manifest is checked and every sha256 verified first."""
        folder = Path(folder)
        manifest = manifest or Manifest.read(folder)
        manifest.check_runnable()
        manifest.verify_files(folder)
        models = [load_fold_weights(folder / fold.file, manifest.normalization, manifest.architecture)
                  for fold in sorted(manifest.folds, key=lambda f: f.fold)]
        return cls(manifest, models, device)

    @property
    def folds(self) -> int:
        return len(self.models)

    def _check_input(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        tensor = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
        slices, channels, size = self.manifest.input_shape
        if tuple(tensor.shape) != (slices, channels, size, size):
            raise ValueError(f'Argument "x" must have shape {[slices, channels, size, size]}, got {list(tensor.shape)}')
        tensor = tensor.to(self.device)
        return tensor.contiguous(memory_format=torch.channels_last) if self.mixed_precision else tensor

    def _one(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = functional_call(self._skeleton, (params, buffers), (x,))
        return logits

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits ``[K, S, classes]`` (all folds in one vmapped call when ``batched``)."""
        if not self.batched:
            return self.logits_loop(x)
        tensor = self._check_input(x)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed_precision):
            out = torch.vmap(self._one, in_dims=(0, 0, None))(self._params, self._buffers, tensor)
        return out.float()

    def logits_loop(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The folds one after another on the same batch (CPU default; the reference)."""
        tensor = self._check_input(x)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed_precision):
            out = torch.stack([m(tensor) for m in self.models])
        return out.float()

    def scores(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probability of the positive class, ``[K, S]`` (float64 numpy)."""
        probabilities = torch.softmax(self.logits(x), dim=-1)[..., self.manifest.positive_index]
        return probabilities.double().cpu().numpy()

    def predict(self, x: np.ndarray | torch.Tensor) -> Prediction:
        """Scores -> per-fold patient score (slice aggregation) -> calibrated -> mean over folds
        -> status (:func:`pipeline.model.aggregate.served_probability`)."""
        scores = self.scores(x)
        m = self.manifest
        served = served_probability(scores, m.slice_aggregation, m.fold_aggregation, m.calibration_map, m.fold_scale)
        return Prediction(scores=scores, probability=served.probability, positive=is_positive(served.probability, m.threshold),
                          raw_score=served.raw, fold_probabilities=served.fold_probabilities)
