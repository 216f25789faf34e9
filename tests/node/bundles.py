"""Small model bundles for the node's tests: random-initialised folds, written the way
training writes them (``pipeline.model.bundle.Manifest`` + one ``state_dict`` file per fold)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.model.bundle import FoldFile, Manifest, new_device_uid, sha256_of
from pipeline.model.network import build_resnet50
from pipeline.prep.params import PreprocessParams

#: Small crops keep the tests quick; the node runs whatever the manifest says.
TEST_PARAMS = PreprocessParams(output_size=32)
#: Quicker still, for tests about what happens around a job rather than in it: no N4.
QUICK = PreprocessParams(output_size=32, bias_correction=False)


def write_random_bundle(folder: Path, *, folds: int = 2, seed: int = 0, name: str = "test-bundle",
                        version: str = "0.0.1", params: PreprocessParams = TEST_PARAMS, threshold: float = 0.5,
                        calibration: dict | None = None, metrics: dict | None = None, training: dict | None = None,
                        fold_scale: str = "probability") -> Path:
    """Random folds (never measured: ``models activate`` refuses them without ``force``);
    ``calibration``, ``metrics`` and ``training`` as training would record them, for tests of
    the served rule and of the activation guards."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    files = []
    for fold in range(folds):
        path = folder / f"fold{fold}.pt"
        torch.save(build_resnet50().state_dict(), path)
        files.append(FoldFile(fold, path.name, sha256_of(path)))
    Manifest(
        name=name, version=version, device_uid=new_device_uid(), preprocessing=params,
        input_shape=(params.slice_count, params.channels, params.output_size), folds=tuple(files), threshold=threshold,
        calibration=calibration or {}, metrics=metrics or {}, fold_scale=fold_scale,
        training=training or {"note": "random initialisation, for tests"},
    ).write(folder)
    return folder
