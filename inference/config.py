"""Typed configuration of the chest X-ray vision-language model.

One :class:`ModelConfig` describes everything needed to rebuild the model around its
weights: preprocessing, vision backbone, findings classifier, aligner, prompt and generation
defaults. It is saved as JSON in the model bundle's manifest; :meth:`ModelConfig.from_dict`
refuses unknown or ill-typed keys with a :class:`~inference.errors.ConfigError` that names
the key (``aligner.kind``, ``preprocess.image_size``, ...).
"""

from __future__ import annotations

import dataclasses
import types
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from inference.errors import ConfigError
from report_language.labels import CHEXPERT_LABELS

AlignerKind = Literal["qformer", "linear", "mlp", "gemma3", "tac"]
VisionKind = Literal["transformers", "biovil_t"]
ClassifierKind = Literal["head", "biovil_t", "none"]
TokenLayout = Literal["patches", "channels_first"]
ConversationStyle = Literal["two", "single"]
ResizeMode = Literal["pad", "crop", "stretch"]
PadFill = Literal["black", "mean"]
ImageTokenization = Literal["separate", "separate_stripped", "whole"]
KvCache = Literal["dynamic", "static"]
VoiMode = Literal["dicom", "percentile", "minmax"]

_T = TypeVar("_T")


@dataclass
class PreprocessConfig:
    """How DICOM pixels become the encoder's input tensor."""

    image_size: int = field(default=224, metadata={"help": "Square encoder input size in pixels."})
    resize_mode: ResizeMode = field(
        default="pad",
        metadata={"help": "'pad': keep the whole image, pad the short side; 'crop': centre "
                  "crop; 'stretch': resize both sides to the square (XrayGPT's transform)."},
    )
    voi: VoiMode = field(
        default="dicom",
        metadata={
            "help": "'dicom': the file's VOI LUT or window (percentile window when it has none); "
            "'percentile': always a percentile window; 'minmax': full stored range."
        },
    )
    percentile_low: float = field(default=0.5, metadata={"help": "Lower percentile window bound."})
    percentile_high: float = field(
        default=99.5, metadata={"help": "Upper percentile window bound."}
    )
    channels: int = field(default=3, metadata={"help": "Channels the encoder expects (1 or 3)."})
    mean: tuple[float, ...] = field(
        default=(0.5, 0.5, 0.5),
        metadata={"help": "Per-channel mean subtracted after [0, 1] scaling."},
    )
    std: tuple[float, ...] = field(
        default=(0.5, 0.5, 0.5), metadata={"help": "Per-channel standard deviation."}
    )
    pad_fill: PadFill = field(
        default="black",
        metadata={"help": "With resize_mode 'pad': 'black' pads with 0 (air); 'mean' with "
                  "the normalisation mean, as LLaVA's expand2square does (Libra)."},
    )
    stretch_display: bool = field(
        default=False,
        metadata={"help": "Rescale each display image (after the VOI window) to its own "
                  "minimum and maximum before resizing, as MAIRA-2's processor does."},
    )
    grid_pinpoints: tuple[tuple[int, int], ...] = field(
        default=(),
        metadata={"help": "LLaVA-NeXT's 'anyres' resolutions (height, width): each image is "
                  "seen whole and as tiles of one of them (inference.anyres); empty: one "
                  "square input per image."},
    )

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ConfigError(f"preprocess.image_size must be >= 16, got {self.image_size}")
        if self.channels not in (1, 3):
            raise ConfigError(f"preprocess.channels must be 1 or 3, got {self.channels}")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if len(value) != self.channels:
                raise ConfigError(
                    f"preprocess.{key} needs one value per channel ({self.channels}), "
                    f"got {len(value)}"
                )
        if any(s <= 0 for s in self.std):
            raise ConfigError("preprocess.std values must be > 0")
        if self.pad_fill == "mean" and len(set(self.mean)) != 1:
            raise ConfigError("preprocess.pad_fill 'mean' needs the same mean for every channel")
        for pinpoint in self.grid_pinpoints:
            if len(pinpoint) != 2 or any(side % self.image_size for side in pinpoint):
                raise ConfigError(
                    f"preprocess.grid_pinpoints: {list(pinpoint)} is not (height, width) in "
                    f"multiples of image_size {self.image_size}"
                )
        if not 0.0 <= self.percentile_low < self.percentile_high <= 100.0:
            raise ConfigError(
                "preprocess.percentile_low/percentile_high must satisfy 0 <= low < high <= 100"
            )


@dataclass
class VisionConfig:
    """The vision backbone: a transformers vision model, or BioViL-T (RaDialog)."""

    backbone: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Hugging Face config dict of the backbone (must contain 'model_type'); "
                  "kind 'transformers' only."},
    )
    kind: VisionKind = field(
        default="transformers",
        metadata={"help": "'transformers': any transformers vision model; 'biovil_t': "
                  "BioViL-T's ResNet-50 image model (inference.backbones.biovil_t)."},
    )
    biovil_t: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "BioViL-T sizes (stem_width, blocks, expansion, vit_width, "
                  "projector_width); kind 'biovil_t' only."},
    )
    crop: int | None = field(
        default=None,
        metadata={"help": "Centre crop (pixels) of the preprocessed image that the encoder "
                  "sees; unset: the whole image."},
    )
    skip_tokens: int = field(
        default=0,
        metadata={"help": "Leading tokens of the backbone's output left out (1: a ViT's CLS "
                  "token, as LLaVA's 'default' feature selection does)."},
    )
    feature_layer: int | None = field(
        default=None,
        metadata={"help": "Read the backbone's hidden state of this layer (-1: the last "
                  "layer's output before any final norm, as LLaVA-Rad reads timm's ViT) "
                  "instead of its last_hidden_state."},
    )
    all_layers: bool = field(
        default=False,
        metadata={"help": "Hand the aligner every layer's hidden state, (B, layers, N, D), "
                  "instead of one (Libra's TAC reads all of RAD-DINO's layers)."},
    )
    tokens: TokenLayout = field(
        default="patches",
        metadata={"help": "BioViL-T: 'patches' = one token per grid cell of the fused map; "
                  "'channels_first' = the projected map reshaped without a permute, as "
                  "RaDialog v1 feeds its Q-Former."},
    )

    def __post_init__(self) -> None:
        if self.kind == "transformers" and "model_type" not in self.backbone:
            raise ConfigError("vision.backbone must contain 'model_type' (e.g. 'vit', 'resnet')")
        if self.skip_tokens < 0:
            raise ConfigError(f"vision.skip_tokens must be >= 0, got {self.skip_tokens}")
        if self.crop is not None and self.crop < 16:
            raise ConfigError(f"vision.crop must be >= 16 when set, got {self.crop}")


@dataclass
class ClassifierConfig:
    """The CheXpert findings head on mean-pooled patch features."""

    labels: tuple[str, ...] = field(
        default=CHEXPERT_LABELS, metadata={"help": "Output labels, in output order."}
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout before the linear head."})
    kind: ClassifierKind = field(
        default="head",
        metadata={"help": "'head': a linear head on the encoder's pooled features; "
                  "'biovil_t': a BioViL-T of its own with two linear layers on its pooled "
                  "projected map (RaDialog's CheXpert classifier); 'none': the model has no "
                  "findings head (XrayGPT, LLaVA, MedGemma): no probabilities, no findings line "
                  "in the prompt, labels empty."},
    )
    biovil_t: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Sizes of the classifier's BioViL-T."}
    )
    crop: int | None = field(
        default=None, metadata={"help": "Centre crop (pixels) the classifier sees ('biovil_t')."}
    )
    hidden_size: int = field(
        default=512, metadata={"help": "Width of the first linear layer ('biovil_t')."}
    )
    grid_pool: int = field(
        default=4, metadata={"help": "Average-pooling window over the projected map ('biovil_t')."}
    )
    pooling: str = field(
        default="mean",
        metadata={
            "help": "How patch features are pooled: 'mean', or 'meanmax' (mean and max "
            "concatenated; small findings such as nodules and fractures survive max pooling)."
        },
    )

    def __post_init__(self) -> None:
        if self.kind == "none":
            if self.labels:
                raise ConfigError("classifier.labels must be empty when classifier.kind is 'none'")
        elif len(set(self.labels)) != len(self.labels) or not self.labels:
            raise ConfigError("classifier.labels must be a non-empty list of distinct names")
        if self.pooling not in ("mean", "meanmax"):
            raise ConfigError(
                f"classifier.pooling must be 'mean' or 'meanmax', not {self.pooling!r}"
            )


@dataclass
class AlignerConfig:
    """Maps patch features into the LLM's embedding space as image tokens."""

    kind: AlignerKind = field(
        default="qformer",
        metadata={
            "help": "'qformer': learned queries cross-attending to patches (RaDialog); "
            "'linear': a linear projection of patch tokens (XrayGPT); "
            "'mlp': an MLP over patch tokens (RaDialog v2 / LLaVA: 2 layers; MAIRA-2: 4); "
            "'gemma3': the patch grid average-pooled to max_image_tokens, an RMS norm "
            "(scale 1 + w) and a matrix product (Gemma 3 / MedGemma); "
            "'tac': Libra's temporal alignment connector over every layer's hidden state "
            "of the current image and its prior (vision.all_layers)."
        },
    )
    num_query_tokens: int = field(default=32, metadata={"help": "Q-Former queries = image tokens."})
    input_norm: bool = field(
        default=False,
        metadata={"help": "A LayerNorm over the features before the Q-Former (BLIP-2's "
                  "ln_vision)."},
    )
    qformer: dict[str, Any] = field(
        default_factory=lambda: {
            "hidden_size": 768,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "intermediate_size": 3072,
            "cross_attention_frequency": 2,
        },
        metadata={"help": "Blip2QFormerConfig keyword arguments (encoder size is filled in)."},
    )
    mlp_hidden_size: int | None = field(
        default=None, metadata={"help": "MLP hidden width; defaults to the LLM hidden size."}
    )
    mlp_layers: int = field(
        default=2,
        metadata={"help": "For 'mlp': linear layers, GELU between them (LLaVA 2, MAIRA-2 4)."},
    )
    max_image_tokens: int | None = field(
        default=None,
        metadata={"help": "For 'linear'/'mlp': average-pool the patch tokens down to this many; "
                  "for 'gemma3': the tokens per image (a square; the patch grid is pooled "
                  "in 2-D)."},
    )
    norm_eps: float = field(
        default=1e-6, metadata={"help": "For 'gemma3': epsilon of its RMS norm."}
    )
    attention_heads: int = field(
        default=8,
        metadata={"help": "For 'tac': heads of its attention blocks (Libra: the LLM's "
                  "num_attention_heads)."},
    )
    feature_layers: int = field(
        default=12, metadata={"help": "For 'tac': backbone layers it reads (RAD-DINO: 12)."}
    )
    image_newline: tuple[float, ...] = field(
        default=(),
        metadata={"help": "With preprocess.grid_pinpoints: LLaVA-NeXT's learned vector "
                  "(llm_hidden_size values) that ends each row of tile tokens."},
    )

    def __post_init__(self) -> None:
        if self.kind not in get_args(AlignerKind):
            raise ConfigError(
                f"aligner.kind must be one of {get_args(AlignerKind)}, got {self.kind!r}"
            )
        if self.num_query_tokens < 1:
            raise ConfigError("aligner.num_query_tokens must be >= 1")
        if self.mlp_layers < 1:
            raise ConfigError("aligner.mlp_layers must be >= 1")
        if self.kind == "tac" and (self.attention_heads < 1 or self.feature_layers < 4):
            raise ConfigError("aligner.kind 'tac' needs attention_heads >= 1 and "
                              "feature_layers >= 4")
        if self.max_image_tokens is not None and self.max_image_tokens < 1:
            raise ConfigError("aligner.max_image_tokens must be >= 1 when set")
        if self.kind == "gemma3" and (
            self.max_image_tokens is None or round(self.max_image_tokens**0.5) ** 2
            != self.max_image_tokens
        ):
            raise ConfigError("aligner.kind 'gemma3' needs max_image_tokens, a square number")


@dataclass
class ConversationConfig:
    """A separator conversation template, as FastChat writes them (LLaMA-era models).

    The prompt is ``system + sep``, then ``role + ": " + message + separator`` per message,
    then the answering role and ``":"``. Style ``two`` ends user messages with ``sep`` and
    answers with ``sep2`` (Vicuna v1.1: roles USER/ASSISTANT, ``" "`` and ``"</s>"``, as
    RaDialog uses); style ``single`` ends every message with ``sep`` (XrayGPT: roles
    Patient/Doctor and ``"###"``).
    """

    style: ConversationStyle = field(
        default="two", metadata={"help": "'two': sep after user, sep2 after answers; "
                                 "'single': sep after every message."}
    )
    roles: tuple[str, ...] = field(
        default=("USER", "ASSISTANT"), metadata={"help": "The asking and the answering role."}
    )
    sep: str = field(default=" ", metadata={"help": "Separator after the system text and "
                                            "after user messages."})
    sep2: str = field(default="</s>", metadata={"help": "Separator after answers ('two')."})

    def __post_init__(self) -> None:
        if self.style not in get_args(ConversationStyle):
            raise ConfigError(
                f"prompt.conversation.style must be one of {get_args(ConversationStyle)}, "
                f"got {self.style!r}"
            )
        if len(self.roles) != 2 or not all(role.strip() for role in self.roles):
            raise ConfigError("prompt.conversation.roles must be two non-empty role names")

    def separator(self, answering: bool) -> str:
        """What ends a message of the asking (``False``) or answering (``True``) role."""
        return self.sep2 if answering and self.style == "two" else self.sep


@dataclass
class PromptConfig:
    """Wording of the prompts; shared by training and inference through one builder."""

    system_prompt: str | None = field(
        default="You are an experienced radiologist reading chest radiographs.",
        metadata={"help": "System message when the chat template supports one."},
    )
    image_placeholder: str = field(
        default="<ImageHere>", metadata={"help": "Marker replaced by the image tokens."}
    )
    report_instruction: str = field(
        default=(
            "You are to act as a radiologist and write the findings section of a chest X-ray "
            "report for this image and the given predicted findings. Write one fluent text "
            "without enumeration, be concise and give no explanations."
        ),
        metadata={"help": "Instruction used by generate_report (RaDialog's wording)."},
    )
    no_findings_text: str = field(
        default="no abnormal findings", metadata={"help": "Shown when no finding is positive."}
    )
    first_turn: str | None = field(
        default=None,
        metadata={
            "help": "Layout of the first user message, with {image}, {findings}, {context} "
            "(indication and current report lines, each ending in a newline; no indication "
            "line when {indication} is used), {indication} (the worklist's indication, or "
            "no_indication_text) and {instruction}; unset: the node's own layout."
        },
    )
    indication_line: str = field(
        default="Clinical indication: {indication}\n",
        metadata={"help": "The indication's line in first_turn's {context}, with "
                  "{indication} (Libra: ' Following clinical context: Indication: ...')."},
    )
    no_indication_text: str = field(
        default="N/A",
        metadata={"help": "What {indication} of first_turn says when the worklist has none "
                  "(MAIRA-2's processor writes 'N/A' for a missing section)."},
    )
    message_parts: bool = field(
        default=False,
        metadata={
            "help": "Hand the chat template each message as a list of parts ({'type': "
            "'text', 'text': ...} and {'type': 'image', 'index': 0}), as multi-image "
            "processors' templates read them (MAIRA-2); unset: plain strings."
        },
    )
    add_bos: bool = field(
        default=False,
        metadata={
            "help": "Begin with the tokenizer's BOS token when the chat template's text does "
            "not (LLaVA-family processors tokenize the rendered template with special "
            "tokens: MAIRA-2)."
        },
    )
    image_tokenization: ImageTokenization = field(
        default="separate",
        metadata={
            "help": "How the text around the image placeholder becomes tokens, as the "
            "model's authors tokenized it: 'separate' = each side on its own (XrayGPT); "
            "'separate_stripped' = each side on its own without the whitespace next to the "
            "placeholder (RaDialog: transformers 4.28's slow tokenizer around a special "
            "token); 'whole' = the whole prompt, split at the placeholder token (LLaVA)."
        },
    )
    image_expansion: str | None = field(
        default=None,
        metadata={
            "help": "With 'whole': text that replaces the placeholder before tokenizing, "
            "with {image} where the image tokens go, as the model's processor expands it "
            "(Gemma 3: '\\n\\n<start_of_image>{image}<end_of_image>\\n\\n'); unset: "
            "the placeholder itself marks the image."
        },
    )
    image_token: str | None = field(
        default=None,
        metadata={
            "help": "The tokenizer's token at image positions, with image_expansion "
            "(Gemma 3: '<image_soft_token>')."
        },
    )
    list_no_finding: bool = field(
        default=False,
        metadata={
            "help": "List 'No Finding' when it is positive and no finding other than Support "
            "Devices is (RaDialog's rule); unset: never list it."
        },
    )

    def __post_init__(self) -> None:
        if self.message_parts and self.conversation is not None:
            raise ConfigError("prompt.message_parts is for chat templates: unset conversation")
        if self.image_expansion is not None:
            if self.image_tokenization != "whole" or not self.image_token:
                raise ConfigError(
                    "prompt.image_expansion needs image_tokenization 'whole' and an image_token"
                )
            if self.image_expansion.count("{image}") != 1:
                raise ConfigError("prompt.image_expansion must contain {image} once")
        if self.indication_line.count("{indication}") != 1:
            raise ConfigError("prompt.indication_line must contain {indication} once")
        if self.first_turn is not None:
            for name in ("{image}", "{instruction}"):
                if name not in self.first_turn:
                    raise ConfigError(f"prompt.first_turn must contain {name}")
            try:
                self.first_turn.format(
                    image="", findings="", context="", indication="", instruction=""
                )
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"prompt.first_turn: only {{image}}, {{findings}}, {{context}}, "
                    f"{{indication}} and {{instruction}} may be used ({exc!r})"
                ) from exc
    conversation: ConversationConfig | None = field(
        default=None,
        metadata={
            "help": "A separator template (Vicuna v1.1, XrayGPT's); when unset, the "
            "tokenizer's chat template, else a plain '### User:' layout."
        },
    )


@dataclass
class GenerationConfig:
    """Default decoding options; callers may override them per call."""

    max_new_tokens: int = field(default=256, metadata={"help": "Upper bound on generated tokens."})
    num_beams: int = field(default=1, metadata={"help": "1 = greedy; > 1 = beam search."})
    use_cache: bool = field(default=True, metadata={"help": "Reuse the KV cache across steps."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "1.0 disables it."})
    stop_strings: tuple[str, ...] = field(
        default=(),
        metadata={"help": "Text that ends an answer besides EOS (XrayGPT's '###'); the answer "
                  "is cut before it."},
    )
    cache_implementation: KvCache = field(
        default="dynamic",
        metadata={"help": "'dynamic': a KV cache that grows per step; 'static': one allocated "
                  "for the whole generation, which transformers compiles with CUDA graphs on "
                  "a GPU (same tokens; faster decoding where the compile pays off)."},
    )

    def __post_init__(self) -> None:
        if self.cache_implementation not in get_args(KvCache):
            raise ConfigError(
                f"generation.cache_implementation must be one of {get_args(KvCache)}, got "
                f"{self.cache_implementation!r}"
            )
        if self.max_new_tokens < 1:
            raise ConfigError("generation.max_new_tokens must be >= 1")
        if self.num_beams < 1:
            raise ConfigError("generation.num_beams must be >= 1")
        if self.repetition_penalty <= 0:
            raise ConfigError("generation.repetition_penalty must be > 0")


@dataclass
class ModelConfig:
    """Complete description of the model around its weights (saved in the bundle)."""

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    vision: VisionConfig = field(default_factory=lambda: VisionConfig({"model_type": "vit"}))
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    llm_hidden_size: int = field(default=576, metadata={"help": "Embedding size of the LLM."})
    max_images: int = field(
        default=1,
        metadata={
            "help": "Images of a study whose tokens enter the prompt (the first ones given)."
        },
    )
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        if self.llm_hidden_size < 1:
            raise ConfigError("llm_hidden_size must be >= 1")
        if self.max_images < 1:
            raise ConfigError("max_images must be >= 1")
        channels = self.vision.backbone.get("num_channels")
        if channels is not None and channels != self.preprocess.channels:
            raise ConfigError(
                f"preprocess.channels ({self.preprocess.channels}) differs from the backbone's "
                f"num_channels ({channels})"
            )
        if (self.aligner.kind == "tac") != self.vision.all_layers:
            raise ConfigError("aligner.kind 'tac' and vision.all_layers go together")
        if self.aligner.kind == "tac" and self.classifier.kind != "none":
            raise ConfigError("aligner.kind 'tac' needs classifier.kind 'none'")
        if self.preprocess.grid_pinpoints:
            if self.classifier.kind != "none" or self.aligner.kind not in ("mlp", "linear"):
                raise ConfigError(
                    "preprocess.grid_pinpoints (tiles) needs classifier.kind 'none' and a "
                    "patch aligner ('mlp' or 'linear')"
                )
            if len(self.aligner.image_newline) != self.llm_hidden_size:
                raise ConfigError(
                    f"aligner.image_newline needs llm_hidden_size ({self.llm_hidden_size}) "
                    f"values with preprocess.grid_pinpoints, got {len(self.aligner.image_newline)}"
                )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output, naming any bad key.

        Raises
        ------
        ConfigError
            For an unknown key, a value of the wrong type or a rule violation.
        """
        return _build(cls, data, "")


def _build(cls: type[_T], data: Any, path: str) -> _T:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {path + unknown[0]!r}")
    kwargs = {name: _coerce(hints[name], value, path + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # missing required field
        raise ConfigError(f"{path or 'config'}: {exc}") from exc


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _build(hint, value, key + ".")
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(args[0], value, key)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{key} must be one of {get_args(hint)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        (item_type, _ellipsis) = get_args(hint)
        return tuple(_coerce(item_type, v, key) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return dict(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is not hint:
        raise ConfigError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


__all__ = [
    "AlignerConfig",
    "AlignerKind",
    "ClassifierConfig",
    "ClassifierKind",
    "ConversationConfig",
    "ConversationStyle",
    "ImageTokenization",
    "KvCache",
    "GenerationConfig",
    "ModelConfig",
    "PadFill",
    "PreprocessConfig",
    "PromptConfig",
    "ResizeMode",
    "TokenLayout",
    "VisionConfig",
    "VisionKind",
    "VoiMode",
]
