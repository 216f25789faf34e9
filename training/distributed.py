"""Data-parallel training under ``torchrun`` (DDP): the same CV on several processes or GPUs.

``torchrun --nproc_per_node N -m training.cli train ...`` starts N copies; each joins the
process group (gloo on CPU, NCCL on CUDA), trains every fold on its share of each batch
(the global batch order is the same on every rank: same seed), and DDP averages the
gradients. Rank 0 preprocesses first (the others then read its cache), writes the bundle
and the report, and registers it; the others only train. Without torchrun nothing here
is used.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["init_from_env", "world_size", "rank", "is_main", "barrier", "shard", "wrap", "shutdown"]


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group when started by torchrun with more than one process."""
    if dist.is_available() and not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        backend = "nccl" if device == "cuda" and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        return True
    return False


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(batch: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch of indices."""
    return batch[rank()::world_size()] if world_size() > 1 else batch


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP around ``model`` when running distributed (gradients averaged over the ranks)."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
