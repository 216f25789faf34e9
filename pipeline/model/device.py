"""Where the networks run: the one reading of a device setting ("auto", "cpu", "cuda") for the
node's worker, ``train`` and ``evaluate``."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DEVICES", "resolve_device"]

#: What a device setting may say: auto (CUDA when torch sees a device, else the CPU), cpu, cuda.
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` stands for; RuntimeError when CUDA is asked for and absent.
    (torch is imported here, not with the module: the config checks read DEVICES.)"""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda was asked for but torch sees no CUDA device")
    if name not in DEVICES:
        raise ValueError(f"device {name!r} is not one of {', '.join(DEVICES)}")
    return torch.device(name)
