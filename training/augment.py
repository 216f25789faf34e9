"""Batch-level augmentation on the training device, and mixup.

Haim et al. 2022, "DL analysis": random rotations, zooming, contrast modification and
mixup. fastai's ``aug_transforms`` values (../shared/METHOD.md): rotation U(+-10 deg) and zoom
U(1, 1.1) with p 0.75, as ONE ``affine_grid`` + ``grid_sample`` per batch with reflection
padding (so the GPU is never waiting for per-image CPU work); lighting 0.2 with p 0.75.
fastai's lighting works in logit space on [0, 1] images; the inputs here are z-scored, so
contrast is defined directly: ``x -> mean + c (x - mean) + b`` per image, c log-uniform in
[1 - l, 1 / (1 - l)], b uniform in [-l, l] z-units. Every random draw comes from the
caller's ``torch.Generator``: a seed gives the same batches.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from training.settings import TrainSettings

__all__ = ["augment_batch", "dihedral_batch", "mixup_batch"]


def _uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def _bernoulli(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=device) < p


def augment_batch(x: torch.Tensor, settings: TrainSettings, generator: torch.Generator) -> torch.Tensor:
    """The training batch's augmentation, as ``settings.augmentation`` names it: ``fastai``
    (rotation + zoom (+ optional flip) as one affine resample, then contrast/brightness),
    ``dihedral`` (:func:`dihedral_batch`) or ``none``."""
    if settings.augmentation == "dihedral":
        return dihedral_batch(x, generator)
    if settings.augmentation == "none":
        return x
    n, device = x.shape[0], x.device
    angle = _uniform(n, -settings.rotate_degrees, settings.rotate_degrees, generator, device) * (math.pi / 180)
    zoom = _uniform(n, 1.0, settings.zoom_max, generator, device)
    apply = _bernoulli(n, settings.affine_p, generator, device)
    angle = torch.where(apply, angle, torch.zeros_like(angle))
    zoom = torch.where(apply, zoom, torch.ones_like(zoom))
    flip = torch.where(_bernoulli(n, settings.flip_p, generator, device), -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(n, 2, 3, device=device, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    if settings.affine_p > 0 or settings.flip_p > 0:  # decided by the settings: no host sync per batch
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if settings.lighting > 0 and settings.lighting_p > 0:
        light = _bernoulli(n, settings.lighting_p, generator, device)
        low = math.log(1 - settings.lighting)
        contrast = torch.exp(_uniform(n, low, -low, generator, device))
        brightness = _uniform(n, -settings.lighting, settings.lighting, generator, device)
        contrast = torch.where(light, contrast, torch.ones_like(contrast)).view(n, 1, 1, 1)
        brightness = torch.where(light, brightness, torch.zeros_like(brightness)).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + contrast * (x - mean) + brightness
    return x


def dihedral_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image turned by a random multiple of 90 degrees and mirrored with probability 0.5
    (the 8 symmetries of the square): exact, no resampling, nothing cut off. A lesion crop
    has no preferred orientation, so every one of them is a plausible image."""
    n = x.shape[0]
    turns = torch.randint(0, 4, (n,), generator=generator, device=x.device)
    mirror = torch.rand(n, generator=generator, device=x.device) < 0.5
    mirrored = torch.where(mirror.view(n, 1, 1, 1), x.flip(-1), x)
    out = mirrored
    for k in (1, 2, 3):  # square images: every turn has the input's shape
        out = torch.where((turns == k).view(n, 1, 1, 1), torch.rot90(mirrored, k, dims=(-2, -1)), out)
    return out


def mixup_batch(x: torch.Tensor, y_onehot: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """fastai MixUp: per-sample lambda ~ Beta(alpha, alpha), lambda = max(lambda, 1 - lambda),
    partner = a random permutation of the batch; inputs and one-hot targets are mixed alike
    (a batch-level soft-F1 loss cannot mix per-sample losses)."""
    n = x.shape[0]
    # Beta draws through the generator: Beta(a, a) = G1 / (G1 + G2) with Gamma(a) draws is not
    # generator-aware in torch, so use the inverse of two uniforms' powers (Johnk) instead.
    lam = _beta(n, alpha, generator, x.device).to(x.dtype)
    lam = torch.maximum(lam, 1 - lam)
    partner = torch.randperm(n, generator=generator, device=x.device)
    lx = lam.view(n, 1, 1, 1)
    ly = lam.view(n, 1)
    return lx * x + (1 - lx) * x[partner], ly * y_onehot + (1 - ly) * y_onehot[partner]


def _beta(n: int, alpha: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Beta(alpha, alpha) draws from the given generator (Johnk's method, exact for any alpha),
    without a host sync: 16 candidates per draw in one go, the first ``n`` accepted kept. (For
    alpha 0.4 a candidate is accepted with probability 0.85; running short is far less likely
    than 1e-100; it would give 0.5, a valid lambda.)"""
    candidates = 16 * n
    u = torch.rand(2 * candidates, generator=generator, device=device).view(2, candidates)
    a, b = u[0] ** (1 / alpha), u[1] ** (1 / alpha)
    ok = (a + b <= 1) & (a + b > 0)
    draws = torch.where(ok, a / (a + b).clamp(min=torch.finfo(a.dtype).tiny), torch.full_like(a, 0.5))
    first_accepted = torch.argsort((~ok).to(torch.int8), stable=True)[:n]
    return draws[first_accepted]
