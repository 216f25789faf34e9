"""Writing the model bundle (DESIGN.md "Model bundle") atomically.

Everything (fold weights, ``manifest.json``, the report files) is written into a temporary
folder beside the target, then renamed onto the target in one step: a run interrupted with
Ctrl-C, or failing half way, leaves no half bundle (the temporary folder is removed). Fold
weights are plain ``state_dict`` tensors (``torch.save``), loaded by the node with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Sequence

import torch

from pipeline.model.bundle import FoldFile, Manifest, sha256_of

__all__ = ["ExportError", "fold_file_name", "write_bundle", "write_folder"]


class ExportError(RuntimeError):
    """The bundle cannot be written where asked (target exists, not writable)."""


def fold_file_name(fold: int) -> str:
    return f"fold{fold}.pt"


def write_bundle(
    target: Path,
    state_dicts: Sequence[dict[str, torch.Tensor]],
    make_manifest: Callable[[tuple[FoldFile, ...]], Manifest],
    extra_files: Callable[[Path], None] | None = None,
) -> Manifest:
    """Write the fold weights, then ``make_manifest(fold_files)``'s manifest, then whatever
    ``extra_files(folder)`` writes (the report), and move the folder onto ``target``.

    ``target`` must not exist (a bundle is never overwritten in place; the node may be
    serving it)."""
    manifests: list[Manifest] = []

    def fill(staging: Path) -> None:
        files = []
        for fold, state in enumerate(state_dicts):
            path = staging / fold_file_name(fold)
            torch.save({k: v.detach().cpu().contiguous() for k, v in state.items()}, path)
            files.append(FoldFile(fold=fold, file=path.name, sha256=sha256_of(path)))
        manifest = make_manifest(tuple(files))
        manifest.check_runnable()
        manifest.write(staging)
        if extra_files is not None:
            extra_files(staging)
        manifest.verify_files(staging)
        manifests.append(manifest)

    write_folder(target, fill, "the bundle")
    return manifests[0]


def write_folder(target: Path, fill: Callable[[Path], None], what: str) -> Path:
    """Create ``target`` with what ``fill(folder)`` writes, all or nothing: written into a
    staging folder beside it, fsynced, renamed onto it; an error or Ctrl-C leaves nothing.
    ``target`` must not exist (``what`` names it in the error)."""
    target = Path(target).absolute()
    if target.exists():
        raise ExportError(f"{target} already exists; choose a new folder for {what}")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        fill(staging)
        _fsync_tree(staging)
        os.rename(staging, target)  # atomic on one filesystem; fails if target appeared meanwhile
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
