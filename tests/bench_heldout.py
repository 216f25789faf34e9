"""What the held-out benchmarks (``bench_calibration``, ``bench_outline``) share: a training
cohort at the paper's class balance and a larger held-out cohort of the same design."""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["announce_device", "heldout_arguments"]


def heldout_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The cohort, training and device options, with the paper's sizes as defaults."""
    p.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed)")
    p.add_argument("--patients", type=int, default=59)
    p.add_argument("--positives", type=int, default=16)
    p.add_argument("--heldout", type=int, default=120, help="held-out patients (same positive fraction)")
    p.add_argument("--effect-size", type=float, default=0.6)
    p.add_argument("--geometry", default="axial3d")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--output-size", type=int, default=32)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    return p


def announce_device(choice: str) -> tuple[object, str]:
    """The torch device of ``--device`` and its name, printed as the benchmark's first line."""
    import torch

    from training.engine import resolve_device

    device = resolve_device(choice)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device} ({name}); torch {torch.__version__}", flush=True)
    return device, name
