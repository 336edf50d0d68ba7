"""Torch vision side: backbone, findings classifier and aligner.

:class:`VisionTower` maps preprocessed pixels to ``(probabilities, image_embeddings)``. It is
the module exported to ONNX (:mod:`inference.onnx_export`) and stays in torch for training
and for verifying the exported graph. This module imports no training or I/O code.
"""

from __future__ import annotations

from itertools import pairwise
from os import PathLike
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    Blip2VisionConfig,
    Blip2VisionModel,
    PretrainedConfig,
)

from inference.backbones.biovil_t import BioViLTImageModel, BioViLTSizes, centre_crop
from inference.config import AlignerConfig, ClassifierConfig, ModelConfig, VisionConfig
from inference.errors import ConfigError

#: Vision models that ``AutoModel`` does not map from their config (model_type -> classes).
_UNMAPPED_VISION_MODELS: dict[str, tuple[type[PretrainedConfig], type[nn.Module]]] = {
    "blip_2_vision_model": (Blip2VisionConfig, Blip2VisionModel),  # XrayGPT's EVA ViT-g
}


class VisionEncoder(nn.Module):
    """Any transformers vision backbone, returning patch features ``(B, N, D)``.

    Transformer backbones (ViT, Swin, Dinov2, ...) return their token sequence; CNNs
    (ResNet, ConvNeXt, ...) return their last feature map flattened to tokens.

    Parameters
    ----------
    backbone
        A transformers vision model whose output has ``last_hidden_state``.
    image_size
        Input side length, used once to probe the feature shape.
    channels
        Input channels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        image_size: int,
        channels: int,
        skip_tokens: int = 0,
        feature_layer: int | None = None,
        all_layers: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.skip_tokens = skip_tokens
        self.feature_layer = feature_layer
        self.all_layers = all_layers
        was_training = backbone.training
        backbone.eval()
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, channels, image_size, image_size))
        backbone.train(was_training)
        #: Layers handed on: 1, or every layer's hidden state with ``all_layers``.
        self.num_layers = int(probe.shape[1]) if all_layers else 1
        self.num_tokens = int(probe.shape[-2])
        self.hidden_size = int(probe.shape[-1])

    @classmethod
    def from_config_dict(
        cls,
        backbone: dict,
        image_size: int,
        channels: int,
        skip_tokens: int = 0,
        feature_layer: int | None = None,
        all_layers: bool = False,
    ) -> VisionEncoder:
        """Build a randomly initialised backbone from a Hugging Face config dict."""
        config_kwargs = dict(backbone)
        model_type = config_kwargs.pop("model_type")
        try:
            if model_type in _UNMAPPED_VISION_MODELS:
                config_class, model_class = _UNMAPPED_VISION_MODELS[model_type]
                model = model_class(config_class(**config_kwargs))
            else:
                hf_config = AutoConfig.for_model(model_type, **config_kwargs)
                model = AutoModel.from_config(hf_config)
        except (ValueError, KeyError) as exc:
            reason = str(exc).splitlines()[0][:300]
            raise ConfigError(f"vision.backbone: cannot build {model_type!r}: {reason}") from exc
        return cls(model, image_size, channels, skip_tokens, feature_layer, all_layers)

    @classmethod
    def from_pretrained(
        cls, path: str | PathLike[str], image_size: int, channels: int
    ) -> VisionEncoder:
        """Load a pretrained backbone from a local Hugging Face directory.

        Raises
        ------
        ConfigError
            When the directory holds no loadable vision model.
        """
        try:
            model = AutoModel.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load a vision backbone from {path}: {exc}") from exc
        return cls(model, image_size, channels)

    def config_dict(self) -> dict[str, Any]:
        """The backbone's HF config as the dict ``VisionConfig.backbone`` stores."""
        hf_config: PretrainedConfig = self.backbone.config  # type: ignore[assignment]
        return {"model_type": hf_config.model_type, **hf_config.to_diff_dict()}

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return patch features ``(B, N, D)``, or ``(B, layers, N, D)`` with
        ``all_layers`` (each layer's output, the embeddings left out)."""
        if self.all_layers:
            states = self.backbone(pixel_values=pixel_values, output_hidden_states=True)
            stacked = torch.stack(states.hidden_states[1:], dim=1)
            return stacked[:, :, self.skip_tokens :] if self.skip_tokens else stacked
        if self.feature_layer is None:
            hidden = self.backbone(pixel_values=pixel_values).last_hidden_state
        else:
            hidden = self.backbone(
                pixel_values=pixel_values, output_hidden_states=True
            ).hidden_states[self.feature_layer]
        if hidden.dim() == 4:  # CNN feature map (B, C, H, W) -> tokens (B, H*W, C)
            hidden = hidden.flatten(2).transpose(1, 2)
        return hidden[:, self.skip_tokens :] if self.skip_tokens else hidden


class FindingsClassifier(nn.Module):
    """Multi-label head: pooled patch features -> one logit per CheXpert label."""

    def __init__(self, hidden_size: int, config: ClassifierConfig) -> None:
        super().__init__()
        self.pooling = config.pooling
        pooled = hidden_size * (2 if config.pooling == "meanmax" else 1)
        self.norm = nn.LayerNorm(pooled)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(pooled, len(config.labels))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_labels)``."""
        pooled = features.mean(dim=1)
        if self.pooling == "meanmax":
            pooled = torch.cat([pooled, features.amax(dim=1)], dim=-1)
        return self.head(self.dropout(self.norm(pooled)))


class BioViLTFeatures(nn.Module):
    """BioViL-T as the encoder: a centre crop, the image model, tokens ``(B, N, D)``.

    ``tokens="patches"`` gives one token per grid cell of the fused map (RaDialog v2);
    ``"channels_first"`` reshapes the projected map without a permute, so that token ``t``
    is the ``t``-th run of ``D`` values of its channel-major flattening, as RaDialog v1's
    Q-Former was trained on.
    """

    def __init__(self, config: VisionConfig, image_size: int) -> None:
        super().__init__()
        sizes = BioViLTSizes.from_dict(config.biovil_t, "vision.biovil_t")
        if config.tokens == "channels_first" and sizes.projector_width is None:
            raise ConfigError("vision.tokens 'channels_first' needs a projector_width")
        self.model = BioViLTImageModel(sizes)
        self.crop = config.crop
        self.layout = config.tokens
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            probe = self.forward(torch.zeros(1, 3, image_size, image_size))
        self.model.train(was_training)
        self.num_tokens = int(probe.shape[1])
        self.hidden_size = int(probe.shape[2])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return tokens ``(B, N, D)``."""
        patches, projected = self.model(centre_crop(pixel_values, self.crop))
        if self.layout == "channels_first":
            assert projected is not None
            return projected.reshape(projected.shape[0], -1, projected.shape[1])
        return patches.flatten(2).transpose(1, 2)


class BioViLTClassifier(nn.Module):
    """RaDialog's CheXpert classifier: a BioViL-T of its own on a centre crop, its projected
    map average-pooled (``grid_pool``), flattened channel-major, two linear layers."""

    def __init__(self, config: ClassifierConfig, image_size: int) -> None:
        super().__init__()
        sizes = BioViLTSizes.from_dict(config.biovil_t, "classifier.biovil_t")
        if sizes.projector_width is None:
            raise ConfigError("classifier.biovil_t needs a projector_width")
        self.biovil_encoder = BioViLTImageModel(sizes)
        self.crop = config.crop
        self.grid_pool = config.grid_pool
        self.biovil_encoder.eval()
        with torch.no_grad():
            probe = self._pooled(torch.zeros(1, 3, image_size, image_size))
        self.biovil_encoder.train()
        self.fc1 = nn.Linear(probe.shape[1], config.hidden_size)
        self.fc2 = nn.Linear(config.hidden_size, len(config.labels))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return logits ``(B, num_labels)`` from pixels."""
        return self.fc2(F.relu(self.fc1(self._pooled(pixel_values))))

    def _pooled(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _, projected = self.biovil_encoder(centre_crop(pixel_values, self.crop))
        assert projected is not None
        if projected.shape[-1] < self.grid_pool:
            raise ConfigError(
                f"classifier.grid_pool {self.grid_pool} is wider than the projected map "
                f"({projected.shape[-1]} cells): choose a larger crop"
            )
        return F.avg_pool2d(projected, self.grid_pool).flatten(1)


class QFormerAligner(nn.Module):
    """RaDialog/BLIP-2 Q-Former: learned queries cross-attend to the patch features.

    Uses transformers' bidirectional ``Blip2QFormerModel`` (self-attention over queries,
    cross-attention to the image every ``cross_attention_frequency`` layers), followed by a
    linear projection into the LLM embedding space.
    """

    def __init__(
        self, vision_size: int, num_tokens: int, llm_size: int, config: AlignerConfig
    ) -> None:
        super().__init__()
        del num_tokens  # the number of queries, not of patches, sets the output length
        qconfig = Blip2QFormerConfig(**{**config.qformer, "encoder_hidden_size": vision_size})
        self.input_norm = nn.LayerNorm(vision_size) if config.input_norm else None
        self.query_tokens = nn.Parameter(
            torch.randn(1, config.num_query_tokens, qconfig.hidden_size) * qconfig.initializer_range
        )
        self.qformer = Blip2QFormerModel(qconfig)
        self.projection = nn.Linear(qconfig.hidden_size, llm_size)

    def query_outputs(self, features: torch.Tensor) -> torch.Tensor:
        """Q-Former outputs ``(B, Q, H_q)`` before projection (used by alignment losses)."""
        if self.input_norm is not None:
            features = self.input_norm(features)
        queries = self.query_tokens.expand(features.shape[0], -1, -1)
        mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)
        return self.qformer(
            query_embeds=queries, encoder_hidden_states=features, encoder_attention_mask=mask
        ).last_hidden_state

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return image tokens ``(B, Q, llm_size)``."""
        return self.projection(self.query_outputs(features))


class _PatchPool(nn.Module):
    """Average-pools ``num_tokens`` tokens down to ``max_tokens`` (identity when unset).

    The pooling is a fixed ``(max_tokens, num_tokens)`` averaging matrix, equal to adaptive
    average pooling but exported to ONNX as one MatMul by every exporter.
    """

    def __init__(self, num_tokens: int, max_tokens: int | None) -> None:
        super().__init__()
        self.out_tokens = num_tokens if max_tokens is None else min(num_tokens, max_tokens)
        self.enabled = self.out_tokens < num_tokens
        weights = F.adaptive_avg_pool1d(torch.eye(num_tokens)[None], self.out_tokens)[0].T
        self.weights: torch.Tensor
        self.register_buffer("weights", weights.contiguous(), persistent=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return tokens
        return torch.matmul(self.weights, tokens)


class LinearAligner(nn.Module):
    """XrayGPT-style linear projection of the patch tokens."""

    def __init__(
        self, vision_size: int, num_tokens: int, llm_size: int, config: AlignerConfig
    ) -> None:
        super().__init__()
        self.pool = _PatchPool(num_tokens, config.max_image_tokens)
        self.projection = nn.Linear(vision_size, llm_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return image tokens ``(B, N, llm_size)``."""
        return self.projection(self.pool(features))


class MLPAligner(nn.Module):
    """MLP projector over the patch tokens: ``aligner.mlp_layers`` linear layers with GELU
    between them (LLaVA and RaDialog v2: two; MAIRA-2: four). Its layers are ``mlp.0``,
    ``mlp.2``, ... as the published projectors number them."""

    def __init__(
        self, vision_size: int, num_tokens: int, llm_size: int, config: AlignerConfig
    ) -> None:
        super().__init__()
        hidden = config.mlp_hidden_size or llm_size
        self.pool = _PatchPool(num_tokens, config.max_image_tokens)
        widths = [vision_size, *[hidden] * (config.mlp_layers - 1), llm_size]
        layers: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(pairwise(widths)):
            if index:
                layers.append(nn.GELU())
            layers.append(nn.Linear(width_in, width_out))
        self.mlp = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return image tokens ``(B, N, llm_size)``."""
        return self.mlp(self.pool(features))


class Gemma3Aligner(nn.Module):
    """Gemma 3's projector (MedGemma): the square patch grid average-pooled to
    ``max_image_tokens``, an RMS norm that scales by ``1 + weight`` in float32, and a product
    with a ``(vision, llm)`` matrix (stored that way round, not as a Linear's ``(out, in)``).
    Parameter names follow the published checkpoint."""

    def __init__(
        self, vision_size: int, num_tokens: int, llm_size: int, config: AlignerConfig
    ) -> None:
        super().__init__()
        assert config.max_image_tokens is not None  # AlignerConfig checks it
        self.patches_per_side = round(num_tokens**0.5)
        tokens_per_side = round(config.max_image_tokens**0.5)
        if (
            self.patches_per_side**2 != num_tokens
            or self.patches_per_side % tokens_per_side
        ):
            raise ConfigError(
                f"aligner.kind 'gemma3': {num_tokens} patches are not a square grid that "
                f"pools to {config.max_image_tokens} tokens"
            )
        self.kernel = self.patches_per_side // tokens_per_side
        self.out_tokens = config.max_image_tokens
        self.eps = config.norm_eps
        self.mm_soft_emb_norm_weight = nn.Parameter(torch.zeros(vision_size))
        self.mm_input_projection_weight = nn.Parameter(torch.zeros(vision_size, llm_size))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Return image tokens ``(B, max_image_tokens, llm_size)``."""
        batch, _, width = features.shape
        grid = features.transpose(1, 2).reshape(
            batch, width, self.patches_per_side, self.patches_per_side
        )
        pooled = F.avg_pool2d(grid, self.kernel).flatten(2).transpose(1, 2)
        x = pooled.float()
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        normed = normed * (1.0 + self.mm_soft_emb_norm_weight.float())
        return torch.matmul(normed.type_as(features), self.mm_input_projection_weight)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation over channels, as torchvision's ``SqueezeExcitation`` computes
    it with a GELU (its parameter names, ``fc1``/``fc2``): the channels' means through two
    1x1 convolutions and a sigmoid scale each channel."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale ``x`` ``(B, C, H, W)`` per channel."""
        scale = self.fc2(F.gelu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(scale)


class TACAligner(nn.Module):
    """Libra's temporal alignment connector (TAC) over every layer's patch features.

    Layer-wise feature extraction (LFE) mixes the ``L`` layers down to one with three
    squeeze-and-excitation + 1x1 convolution steps (L -> L/2 -> L/4 -> 1); the temporal
    fusion module (TFM) shifts the prior image's features by a learned bias weighted by how
    alike the two images are, runs self-attention on each and cross-attention from the
    current image to the prior, and an MLP to the LLM's width. Parameter names are Libra's
    (``LFE.*``, ``cur_self_attention.*``, ``mlp_final.*``, ...).

    Without a prior image the current one is its own prior, as Libra's own code does when a
    study has none; the node hands it none today.
    """

    def __init__(
        self, vision_size: int, num_tokens: int, llm_size: int, config: AlignerConfig
    ) -> None:
        super().__init__()
        layers = config.feature_layers
        self.out_tokens = num_tokens
        self.LFE = nn.Sequential(
            SqueezeExcite(layers, layers // 2),
            nn.Conv2d(layers, layers // 2, 1, bias=False),
            SqueezeExcite(layers // 2, layers // 4),
            nn.Conv2d(layers // 2, layers // 4, 1, bias=False),
            SqueezeExcite(layers // 4, 1),
            nn.Conv2d(layers // 4, 1, 1, bias=False),
        )
        self.LFE_prior_bias = nn.Parameter(torch.tensor(0.0))

        def attention() -> nn.MultiheadAttention:
            return nn.MultiheadAttention(vision_size, config.attention_heads,
                                         batch_first=True, add_bias_kv=True)

        self.cur_self_attention = attention()
        self.prior_self_attention = attention()
        self.cros_attention = attention()
        self.norm1, self.norm2, self.norm3, self.norm4 = (
            nn.LayerNorm(vision_size) for _ in range(4)
        )
        self.mlp_attn = nn.Sequential(
            nn.Linear(vision_size, vision_size), nn.GELU(), nn.Dropout(0.0),
            nn.Linear(vision_size, vision_size), nn.Dropout(0.0),
        )
        self.mlp_final = nn.Sequential(
            nn.Linear(vision_size, llm_size), nn.GELU(),
            nn.Linear(llm_size, llm_size), nn.GELU(),
            nn.Linear(llm_size, llm_size), nn.GELU(),
            nn.Linear(llm_size, llm_size),
        )

    @staticmethod
    def _likeness(current: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        """Libra's weight of the prior: the cosine of the two flattened feature maps,
        mapped to [0, 1] and raised to the 8th power, ``(B, 1, 1)``."""
        a = current.flatten(1)
        b = prior.flatten(1)
        a = a / a.norm(dim=-1, keepdim=True)
        b = b / b.norm(dim=-1, keepdim=True)
        cosine = F.cosine_similarity(a, b, dim=-1, eps=1e-6)
        return ((cosine + 1) / 2).pow(8).view(-1, 1, 1)

    def forward(
        self, features: torch.Tensor, prior: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return image tokens ``(B, N, llm_size)`` from ``(B, L, N, D)`` features of the
        current image and, when there is one, of its prior."""
        current = self.LFE(features).squeeze(1)
        before = current if prior is None else self.LFE(prior).squeeze(1)
        before = before + self._likeness(current, before) * self.LFE_prior_bias
        attended = self.norm1(current + self.cur_self_attention(current, current, current)[0])
        prior_attended = self.norm2(
            before + self.prior_self_attention(before, before, before)[0]
        )
        combined = self.norm3(
            attended + self.cros_attention(attended, prior_attended, prior_attended)[0]
        )
        return self.mlp_final(self.norm4(current + self.mlp_attn(combined)))


def build_aligner(
    vision_size: int, num_tokens: int, llm_size: int, config: AlignerConfig
) -> nn.Module:
    """Instantiate the aligner chosen by ``config.kind``.

    Parameters
    ----------
    vision_size
        Width ``D`` of the patch features.
    num_tokens
        Number ``N`` of patch tokens per image.
    llm_size
        Embedding width of the LLM.
    config
        Aligner options.
    """
    kinds: dict[str, type[nn.Module]] = {
        "qformer": QFormerAligner,
        "linear": LinearAligner,
        "mlp": MLPAligner,
        "gemma3": Gemma3Aligner,
        "tac": TACAligner,
    }
    return kinds[config.kind](vision_size, num_tokens, llm_size, config)


class VisionTower(nn.Module):
    """Pixels -> ``(finding probabilities, image-token embeddings)``.

    Parameters
    ----------
    config
        The model config; ``vision.backbone`` builds the encoder unless ``encoder`` is given.
    encoder
        An already built (e.g. pretrained) :class:`VisionEncoder`.
    """

    def __init__(self, config: ModelConfig, encoder: VisionEncoder | None = None) -> None:
        super().__init__()
        pre = config.preprocess
        self.encoder: VisionEncoder | BioViLTFeatures
        if encoder is not None:
            self.encoder = encoder
        elif config.vision.kind == "biovil_t":
            if pre.channels != 3:
                raise ConfigError("vision.kind 'biovil_t' needs preprocess.channels = 3")
            self.encoder = BioViLTFeatures(config.vision, pre.image_size)
        else:
            self.encoder = VisionEncoder.from_config_dict(
                config.vision.backbone, pre.image_size, pre.channels, config.vision.skip_tokens,
                config.vision.feature_layer, config.vision.all_layers,
            )
            layers = self.encoder.num_layers
            if config.vision.all_layers and layers != config.aligner.feature_layers:
                raise ConfigError(
                    f"aligner.feature_layers is {config.aligner.feature_layers}, the backbone "
                    f"has {layers} layers"
                )
        self.classifier: FindingsClassifier | BioViLTClassifier | None
        if config.classifier.kind == "none":
            self.classifier = None
        elif config.classifier.kind == "biovil_t":
            self.classifier = BioViLTClassifier(config.classifier, pre.image_size)
        else:
            self.classifier = FindingsClassifier(self.encoder.hidden_size, config.classifier)
        self.aligner = build_aligner(
            self.encoder.hidden_size,
            self.encoder.num_tokens,
            config.llm_hidden_size,
            config.aligner,
        )
        self.labels = config.classifier.labels

    @classmethod
    def from_pretrained_backbone(
        cls, config: ModelConfig, backbone_dir: str | PathLike[str]
    ) -> VisionTower:
        """Build a tower around a pretrained backbone from a local Hugging Face directory.

        ``config.vision.backbone`` is replaced by the backbone's own config so that the
        bundle can rebuild the same architecture around the saved weights.
        """
        pre = config.preprocess
        encoder = VisionEncoder.from_pretrained(backbone_dir, pre.image_size, pre.channels)
        config.vision = VisionConfig(encoder.config_dict())
        return cls(config, encoder)

    @property
    def num_image_tokens(self) -> int:
        """Image tokens produced per image."""
        if isinstance(self.aligner, QFormerAligner):
            return self.aligner.query_tokens.shape[1]
        if isinstance(self.aligner, Gemma3Aligner | TACAligner):
            return self.aligner.out_tokens
        pool: _PatchPool = self.aligner.pool  # type: ignore[assignment]
        return pool.out_tokens

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(probabilities (B, L), image_embeddings (B, T, llm_size))``."""
        features = self.encoder(pixel_values)
        if self.classifier is None:  # no findings head: (B, 0)
            return features.new_zeros(features.shape[0], 0), self.aligner(features)
        if isinstance(self.classifier, BioViLTClassifier):
            logits = self.classifier(pixel_values)
        else:
            logits = self.classifier(features)
        probabilities = torch.sigmoid(logits)
        return probabilities, self.aligner(features)


__all__ = [
    "BioViLTClassifier",
    "BioViLTFeatures",
    "FindingsClassifier",
    "Gemma3Aligner",
    "LinearAligner",
    "MLPAligner",
    "QFormerAligner",
    "SqueezeExcite",
    "TACAligner",
    "VisionEncoder",
    "VisionTower",
    "build_aligner",
]
