"""BioViL-T's image model in plain torch, with the key names of its published checkpoints.

BioViL-T (``microsoft/BiomedVLP-BioViL-T``, hi-ml-multimodal's ``ImageModel``) is a
ResNet-50 whose last feature map goes through a 1 x 1 convolution to the width of a small
temporal ViT pooler. With a single image (the only way RaDialog uses it) the pooler does not
run: the missing previous image is a learned constant, concatenated to the current image's
channels (``missing_previous_emb``), and a two-layer 1 x 1-convolution projector maps the
fused map to the joint width. RaDialog v1 feeds the projected map to its Q-Former; its
CheXpert classifier pools the projected map of a second BioViL-T.

hi-ml-multimodal needs torchvision, which this product does not install, so the network is
written here from the published architecture; :func:`biovil_sizes` reads every width and
depth from a checkpoint's tensor shapes, so the same code loads the published files and the
tiny copies the tests write. The temporal pooler's weights are not loaded (RaDialog never
passes a previous image).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from inference.errors import ConfigError

#: Prefix of the ResNet inside ``ImageModel`` (``ImageModel.encoder.encoder``).
RESNET_PREFIX = "encoder.encoder."
#: Keys of the single-image path besides the ResNet.
BACKBONE_TO_VIT = "encoder.backbone_to_vit.weight"
MISSING_PREVIOUS = "encoder.missing_previous_emb"
PROJECTOR_PREFIX = "projector.model."


@dataclass(frozen=True)
class BioViLTSizes:
    """Widths and depths of a BioViL-T image model (read from a checkpoint's shapes).

    Parameters
    ----------
    stem_width
        Channels of the ResNet stem (64 in ResNet-50).
    blocks
        Bottleneck blocks per stage ((3, 4, 6, 3) in ResNet-50).
    expansion
        Bottleneck expansion (4 in ResNet-50).
    vit_width
        Width of ``backbone_to_vit`` (256); the fused map has twice as many channels.
    projector_width
        Output width of the projector (128 as published, 1408 in RaDialog v1's Q-Former
        path); ``None`` for a model without projector.
    """

    stem_width: int = 64
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    expansion: int = 4
    vit_width: int = 256
    projector_width: int | None = 128

    @property
    def resnet_width(self) -> int:
        """Channels of the ResNet's last feature map (2048 in ResNet-50)."""
        return self.stem_width * 2 ** (len(self.blocks) - 1) * self.expansion

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (what the model config stores)."""
        data = asdict(self)
        data["blocks"] = list(self.blocks)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], key: str) -> BioViLTSizes:
        """Read :meth:`to_dict` output; ``key`` names the config entry in errors."""
        known = {"stem_width", "blocks", "expansion", "vit_width", "projector_width"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key '{key}.{unknown[0]}'")
        projector = data.get("projector_width")
        try:
            sizes = cls(
                stem_width=int(data.get("stem_width", 64)),
                blocks=tuple(int(b) for b in data.get("blocks", (3, 4, 6, 3))),
                expansion=int(data.get("expansion", 4)),
                vit_width=int(data.get("vit_width", 256)),
                projector_width=None if projector is None else int(projector),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{key}: {exc}") from exc
        if not sizes.blocks or min(sizes.blocks) < 1 or sizes.stem_width < 1:
            raise ConfigError(f"{key}: blocks and stem_width must be positive")
        return sizes


def biovil_sizes(
    state: Mapping[str, torch.Tensor], prefix: str = "", *, source: str = "checkpoint"
) -> BioViLTSizes:
    """Read a BioViL-T image model's sizes from its state dict.

    Parameters
    ----------
    state
        The state dict (any prefix).
    prefix
        The prefix of the ``ImageModel`` keys (``"visual_encoder."``,
        ``"model.biovil_encoder."``, ...).
    source
        The file name, for error messages.

    Raises
    ------
    ConfigError
        When a key the single-image path needs is missing (the message names the file and
        the key).
    """

    def need(key: str) -> torch.Tensor:
        if prefix + key not in state:
            raise ConfigError(f"{source}: missing key {prefix + key!r} (BioViL-T image model)")
        return state[prefix + key]

    stem = need(RESNET_PREFIX + "conv1.weight")
    stages = []
    pattern = re.compile(re.escape(prefix + RESNET_PREFIX) + r"layer(\d+)\.(\d+)\.conv1\.weight$")
    for key in state:
        match = pattern.match(key)
        if match:
            stages.append((int(match.group(1)), int(match.group(2))))
    if not stages:
        raise ConfigError(f"{source}: no ResNet stage under {prefix + RESNET_PREFIX!r}")
    count = max(stage for stage, _ in stages)
    blocks = tuple(1 + max(b for s, b in stages if s == stage) for stage in range(1, count + 1))
    first = need(RESNET_PREFIX + "layer1.0.conv3.weight")
    planes = need(RESNET_PREFIX + "layer1.0.conv1.weight").shape[0]
    vit = need(BACKBONE_TO_VIT)
    need(MISSING_PREVIOUS)
    projector = state.get(prefix + PROJECTOR_PREFIX + "0.weight")
    return BioViLTSizes(
        stem_width=int(stem.shape[0]),
        blocks=blocks,
        expansion=int(first.shape[0] // planes),
        vit_width=int(vit.shape[0]),
        projector_width=None if projector is None else int(projector.shape[0]),
    )


class Bottleneck(nn.Module):
    """ResNet bottleneck (stride on the 3 x 3 convolution, as torchvision's ResNet-50)."""

    def __init__(self, inplanes: int, planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        width = planes * expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != width:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
    """The ResNet trunk of BioViL-T: stem and bottleneck stages, last feature map out."""

    def __init__(self, sizes: BioViLTSizes) -> None:
        super().__init__()
        stem = sizes.stem_width
        self.conv1 = nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        inplanes = stem
        for index, count in enumerate(sizes.blocks):
            planes = stem * 2**index
            stride = 1 if index == 0 else 2
            blocks = []
            for block in range(count):
                blocks.append(Bottleneck(inplanes, planes, sizes.expansion,
                                         stride if block == 0 else 1))
                inplanes = planes * sizes.expansion
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
        self.stages = len(sizes.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        for index in range(self.stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return x


class _ImageEncoder(nn.Module):
    """``ImageModel.encoder`` on the single-image path (no temporal pooler)."""

    def __init__(self, sizes: BioViLTSizes) -> None:
        super().__init__()
        self.encoder = ResNet(sizes)
        self.backbone_to_vit = nn.Conv2d(sizes.resnet_width, sizes.vit_width, 1, bias=False)
        self.missing_previous_emb = nn.Parameter(torch.zeros(1, sizes.vit_width, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.backbone_to_vit(self.encoder(x))
        previous = self.missing_previous_emb.expand(-1, -1, patches.shape[2], patches.shape[3])
        return torch.cat([patches, previous.expand(patches.shape[0], -1, -1, -1)], dim=1)


class _Projector(nn.Module):
    """``MLP(use_1x1_convs=True)``: 1 x 1 conv, batch norm, ReLU, 1 x 1 conv."""

    def __init__(self, in_width: int, width: int) -> None:
        super().__init__()
        self.model = nn.Sequential(
            nn.Conv2d(in_width, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 1, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class BioViLTImageModel(nn.Module):
    """BioViL-T's ``ImageModel`` for one image; its state-dict keys are the published ones.

    ``forward`` returns ``(patch_embeddings, projected_patch_embeddings)``: the fused map
    ``(B, 2 * vit_width, h, w)`` and its projection ``(B, projector_width, h, w)`` (``None``
    without projector).
    """

    def __init__(self, sizes: BioViLTSizes) -> None:
        super().__init__()
        self.sizes = sizes
        self.encoder = _ImageEncoder(sizes)
        self.projector = (
            None if sizes.projector_width is None
            else _Projector(2 * sizes.vit_width, sizes.projector_width)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        patches = self.encoder(x)
        projected = None if self.projector is None else self.projector(patches)
        return patches, projected


def image_model_state(
    state: Mapping[str, torch.Tensor], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """The keys of :class:`BioViLTImageModel` taken from a checkpoint's state dict.

    Keys of the temporal pooler and of the ResNet's unused ImageNet head (``fc``) are left
    out; the prefix is stripped.
    """
    kept = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name.startswith(("encoder.vit_pooler.", RESNET_PREFIX + "fc.")):
            continue
        if name.startswith(("encoder.", PROJECTOR_PREFIX)):
            kept[name] = value
    return kept


def centre_crop(pixels: torch.Tensor, size: int | None) -> torch.Tensor:
    """The centre ``size x size`` of square images ``(B, C, S, S)``, as torchvision's
    ``CenterCrop`` places it (offset rounded); ``None`` or ``S`` returns the input."""
    side = pixels.shape[-1]
    if size is None or size == side:
        return pixels
    if size > side:
        raise ConfigError(f"a crop of {size} px does not fit an input of {side} px")
    top = int(round((side - size) / 2.0))
    return pixels[..., top : top + size, top : top + size]


__all__ = [
    "BioViLTImageModel",
    "BioViLTSizes",
    "biovil_sizes",
    "centre_crop",
    "image_model_state",
]
