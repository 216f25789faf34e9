"""The network: torchvision ResNet-50 body with fastai's classification head.

Haim et al. 2022, "DL analysis": a ResNet-50 trained with fastai (``cnn_learner(dls,
resnet50)``). ../shared/METHOD.md spells out what that builds: the body is ResNet-50
without its pooling and fc layers; the head concatenates adaptive average and max pooling
(4096) -> BatchNorm1d -> Dropout 0.25 -> Linear 4096->512 (no bias) -> ReLU -> BatchNorm1d
-> Dropout 0.5 -> Linear 512->2 (no bias), Kaiming-normal initialised. With ImageNet
weights the input is normalised with ImageNet's mean and SD inside the network
(``normalization="imagenet"``), so the node and training cannot disagree about it.

``head="linear"`` is torchvision's own classifier instead (global average pooling ->
Linear 2048->2 with bias, torchvision's initialisation): the bundle names it by its
architecture, ``resnet50-linear`` (``resnet50`` is the fastai head).

ImageNet weights are never downloaded: ``load_imagenet_body`` reads torchvision's
``resnet50-0676ba61.pth`` from a local file (``weights_only=True``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet50

__all__ = ["EGFRNet", "HEADS", "architecture_of", "head_of", "build_resnet50", "load_imagenet_body", "IMAGENET_MEAN",
           "IMAGENET_STD"]

#: The classification heads, by the architecture name a bundle records.
HEADS = {"fastai": "resnet50", "linear": "resnet50-linear"}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _ConcatPool(nn.Module):
    """fastai's AdaptiveConcatPool2d: max and average pooling side by side."""

    def __init__(self) -> None:
        super().__init__()
        self.max = nn.AdaptiveMaxPool2d(1)
        self.avg = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.max(x), self.avg(x)], dim=1)


def _head(features: int = 2048, hidden: int = 512, classes: int = 2) -> nn.Sequential:
    head = nn.Sequential(
        _ConcatPool(),
        nn.Flatten(),
        nn.BatchNorm1d(2 * features),
        nn.Dropout(0.25),
        nn.Linear(2 * features, hidden, bias=False),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(0.5),
        nn.Linear(hidden, classes, bias=False),
    )
    for module in head:
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight)
    return head


def _linear_head(backbone: nn.Module, classes: int = 2) -> nn.Sequential:
    """torchvision's classifier: global average pooling and one Linear layer (its default init)."""
    classifier = backbone.fc
    assert isinstance(classifier, nn.Linear), "torchvision's ResNet ends in a Linear classifier"
    fc = nn.Linear(classifier.in_features, classes)
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc)


def architecture_of(head: str) -> str:
    """The bundle's architecture name of a head (``fastai`` -> ``resnet50``)."""
    if head not in HEADS:
        raise ValueError(f'Argument "head" must be one of {", ".join(HEADS)}, got {head!r}')
    return HEADS[head]


def head_of(architecture: str) -> str:
    """The head of a bundle's architecture name (``resnet50-linear`` -> ``linear``)."""
    for head, name in HEADS.items():
        if name == architecture:
            return head
    raise ValueError(f'architecture {architecture!r} is not known (known: {", ".join(HEADS.values())})')


class EGFRNet(nn.Module):
    """ResNet-50 body + a head (fastai's, or torchvision's linear one); ``forward`` returns
    logits ``[N, classes]``."""

    input_mean: torch.Tensor
    input_std: torch.Tensor

    def __init__(self, classes: int = 2, normalization: str = "none", head: str = "fastai") -> None:
        super().__init__()
        backbone = resnet50(weights=None)
        self.body = nn.Sequential(*list(backbone.children())[:-2])
        self.head = _head(classes=classes) if head == "fastai" else _linear_head(backbone, classes)
        self.head_kind = head
        self.normalization = normalization
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        # Buffers, not parameters: saved with the weights, never trained.
        self.register_buffer("input_mean", mean if normalization == "imagenet" else torch.zeros(1, 1, 1, 1))
        self.register_buffer("input_std", std if normalization == "imagenet" else torch.ones(1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.body((x - self.input_mean) / self.input_std))
        return logits


def build_resnet50(classes: int = 2, normalization: str = "none", head: str = "fastai") -> EGFRNet:
    """A randomly initialised network (tests, training from scratch, loading a state_dict)."""
    if normalization not in ("none", "imagenet"):
        raise ValueError(f'Argument "normalization" must be "none" or "imagenet", got {normalization!r}')
    architecture_of(head)  # names the head in its error
    return EGFRNet(classes=classes, normalization=normalization, head=head)


def load_imagenet_body(model: EGFRNet, weights_file: Path) -> None:
    """Copy torchvision's ImageNet ResNet-50 weights (a local ``.pth``) into ``model.body``.

    Raises FileNotFoundError for a missing file and ValueError when the file is not a
    ResNet-50 state_dict. Nothing is downloaded.
    """
    path = Path(weights_file)
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state_dict")
    reference = resnet50(weights=None)
    try:
        reference.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path} is not a torchvision ResNet-50 state_dict: {str(exc).splitlines()[0]}") from None
    model.body.load_state_dict(nn.Sequential(*list(reference.children())[:-2]).state_dict())
