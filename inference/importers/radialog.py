"""RaDialog v1 (github.com/ChantalMP/RaDialog) as a node bundle.

What the published files hold, and where each part goes (docs/model_formats/radialog.md):

=====================================================  =========================================
published file                                         bundle
=====================================================  =========================================
``biovil_t_image_model_proj_size_128.pt`` (BioViL-T)   ``vision.onnx``: the encoder (ResNet,
                                                       ``backbone_to_vit``, missing previous
                                                       image); the temporal pooler and the
                                                       ResNet's ImageNet head are not used
the 1408-wide projector (``--visual-projector``)       ``vision.onnx``: the encoder's projector
``checkpoint_4.pth`` ``model``                         ``vision.onnx``: ``ln_vision``, the
                                                       Q-Former (query FFN; LAVIS names ->
                                                       transformers' ``Blip2QFormerModel``),
                                                       ``query_tokens``; the text FFN, heads and
                                                       embeddings of stage-1 training are left
``ChexpertClassifier*.ckpt`` ``state_dict``            ``vision.onnx``: the classifier (its own
                                                       BioViL-T, 488 crop, ``fc1``, ``fc2``)
``checkpoint-4800/adapter_model.bin``                  ``img_proj_layer`` -> ``vision.onnx``
                                                       (the aligner's projection); the LoRA
                                                       weights -> ``adapters/instruct``
Vicuna-7B v1.3 (``--llm``)                             referenced by path and checksummed, not
                                                       copied; its tokenizer plus ``<IMG>``
=====================================================  =========================================

Every size is read from the files: BioViL-T's widths and depths from its tensors, the
Q-Former's width, depth, query count and cross-attention frequency from its keys, the
classifier's widths from ``fc1``/``fc2``, the LLM width from ``img_proj_layer`` (checked
against the LLM's config). Two things are not stored anywhere and are set as RaDialog's code
sets them: the Q-Former's attention heads (BERT's head width 64: 768 -> 12 heads) and the
crops (448 for the Q-Former, 488 for the classifier, from a 512 resize).

RaDialog v1's 1408-wide projector was frozen at random initialisation and the LAVIS saver
drops frozen parameters, so ``checkpoint_4.pth`` has only its BatchNorm buffers; the
importer takes it from ``checkpoint_4.pth`` when a site's copy has it, else from
``--visual-projector`` (replayed with RaDialog's own code, docs/models.md), and refuses
otherwise.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from inference.backbones.biovil_t import BioViLTSizes, biovil_sizes, image_model_state
from inference.bundle import Provenance
from inference.config import (
    AlignerConfig,
    ClassifierConfig,
    ConversationConfig,
    GenerationConfig,
    ModelConfig,
    PreprocessConfig,
    PromptConfig,
    VisionConfig,
)
from inference.errors import CheckpointError, ConfigError
from inference.importers.blip2 import convert_qformer
from inference.importers.checkpoints import (
    check_shape,
    find_file,
    hf_config,
    load_checkpoint,
    load_tokenizer,
    load_weights,
    need,
    read_json,
    state_dict,
    write_imported_bundle,
)
from inference.vision import VisionTower

#: The classifier's label order (RaDialog demo.py), which is its output order.
LABELS = (
    "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion",
    "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion",
    "Pleural Other", "Fracture", "Support Devices",
)
#: The system message of RaDialog's training and evaluation data (create_data.py, test.py).
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant acting as an "
    "experienced radiologist. The assistant gives professional, detailed, and polite answers "
    "to the user's questions."
)
#: The report request (vicuna_prompts.json, img_matching_examples_ig2_noexamples_IMG_findings).
REPORT_INSTRUCTION = (
    "You are to act as a radiologist and write the finding section of a chest x-ray radiology "
    "report for this X-ray image and the given predicted findings. Write in the style of a "
    "radiologist, write one fluent text without enumeration, be concise and don't provide "
    "explanations or reasons."
)
FIRST_TURN = "Image information: {image}. Predicted Findings: {findings}. {context}{instruction}"
IMAGE_TOKEN = "<IMG>"
#: Resize, then the crops of the Q-Former path and of the classifier (demo.py).
RESIZE, QFORMER_CROP, CLASSIFIER_CROP = 512, 448, 488

BIOVIL_NAME = "biovil_t_image_model_proj_size_128.pt"
QFORMER_NAME = "checkpoint_4.pth"
QFORMER_PATH = "pretraining/outputs/stage1_pt_instruct_blip_origlr_img448/checkpoint_4.pth"
CLASSIFIER_GLOB = "ChexpertClassifier*.ckpt"
CLASSIFIER_DIR = "findings_classifier/checkpoints/chexpert_train"
ADAPTER_DIR = "checkpoints/vicuna-7b-img-instruct"
IMG_PROJ = "base_model.model.model.img_proj_layer."
VISUAL_PROJECTOR = "visual_encoder.projector.model."

DEFAULT_PROVENANCE = Provenance(
    source="RaDialog v1 (github.com/ChantalMP/RaDialog), imported by dicom_node model import",
    licence=(
        "RaDialog: no licence stated for code or weights; Vicuna-7B v1.3 base: non-commercial "
        "licence; BioViL-T: MIT, its model card puts any deployed use out of scope"
    ),
    intended_use="Research use only; not a medical device. Every draft needs a radiologist.",
)


@dataclass(frozen=True)
class RadialogFiles:
    """Where the published files of one RaDialog v1 download are."""

    biovil: Path
    qformer: Path
    classifier: Path
    adapter: Path

    @classmethod
    def locate(cls, source: Path) -> RadialogFiles:
        """Find the files in a RaDialog checkout (the README's places, else a unique match).

        Raises
        ------
        CheckpointError
            When a file is missing or more than one file could be meant (all are named).
        """
        adapters = find_file(source, [f"{ADAPTER_DIR}/checkpoint-*/adapter_model.bin",
                                      "**/checkpoint-*/adapter_model.bin"], "the instruct adapter")
        return cls(
            biovil=find_file(source, [BIOVIL_NAME, f"**/{BIOVIL_NAME}"],
                             "the BioViL-T weights (microsoft/BiomedVLP-BioViL-T)"),
            qformer=find_file(source, [QFORMER_PATH, f"**/{QFORMER_NAME}"],
                              "the stage-1 Q-Former"),
            classifier=classifier_file(source),
            adapter=adapters.parent,
        )


def classifier_file(source: Path) -> Path:
    """RaDialog's CheXpert classifier checkpoint in a download (v1 and v2)."""
    return find_file(source, [f"{CLASSIFIER_DIR}/{CLASSIFIER_GLOB}", f"**/{CLASSIFIER_GLOB}"],
                     "the CheXpert classifier")


def _visual_projector(
    qformer: Mapping[str, torch.Tensor], qformer_path: Path, projector_path: Path | None
) -> dict[str, torch.Tensor]:
    names = ("0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var",
             "1.num_batches_tracked", "3.weight", "3.bias")
    if all(VISUAL_PROJECTOR + n in qformer for n in names):
        return {f"projector.model.{n}": qformer[VISUAL_PROJECTOR + n] for n in names}
    if projector_path is None:
        raise CheckpointError(
            f"{qformer_path}: missing key {VISUAL_PROJECTOR + '0.weight'!r}: RaDialog v1's "
            "1408-wide projector was frozen at random initialisation and not saved; replay "
            "it with RaDialog's code (docs/models.md) and pass --visual-projector FILE"
        )
    state = state_dict(load_checkpoint(projector_path), projector_path)
    found = {}
    for n in names:
        for key in (f"projector.model.{n}", VISUAL_PROJECTOR + n):
            if key in state:
                found[f"projector.model.{n}"] = state[key]
                break
        else:
            raise CheckpointError(f"{projector_path}: missing key {'projector.model.' + n!r}")
    return found


@dataclass(frozen=True)
class ClassifierParts:
    """RaDialog's CheXpert classifier read from its Lightning checkpoint."""

    path: Path
    sizes: BioViLTSizes
    hidden: int
    #: The tower's ``classifier.*`` weights.
    weights: dict[str, torch.Tensor]


def load_classifier(path: Path) -> ClassifierParts:
    """Read the classifier (``state_dict`` of a Lightning ``.ckpt``), sizes from its shapes.

    Raises
    ------
    CheckpointError
        For a missing key or a head that does not give the 14 labels.
    """
    state = state_dict(load_checkpoint(path), path, "state_dict")
    encoder = image_model_state(state, "model.biovil_encoder.")
    try:
        sizes = biovil_sizes(encoder, source=str(path))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    fc1 = need(state, "model.fc1.weight", path)
    fc2 = need(state, "model.fc2.weight", path)
    check_shape(fc2, (len(LABELS), fc1.shape[0]), "model.fc2.weight", path)
    weights = {f"classifier.biovil_encoder.{k}": v for k, v in encoder.items()}
    for part in ("fc1", "fc2"):
        for n in ("weight", "bias"):
            weights[f"classifier.{part}.{n}"] = need(state, f"model.{part}.{n}", path)
    return ClassifierParts(path, sizes, int(fc1.shape[0]), weights)


def rewrite_adapter(directory: Path, out: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """Write the LoRA part of a published peft adapter to ``out`` in today's peft format.

    Returns the published tensors (RaDialog v1 keeps ``img_proj_layer`` among them) and the
    weights file's path.

    Raises
    ------
    CheckpointError
        For a missing file or key, or a rank that differs from the config's.
    """
    weights = directory / "adapter_model.bin"
    if not weights.is_file():
        weights = directory / "adapter_model.safetensors"
    state = state_dict(load_checkpoint(weights), weights)
    config_path = directory / "adapter_config.json"
    published = read_json(config_path)
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in published:
            raise CheckpointError(f"{config_path}: missing key {key!r}")
    lora = {k: v.contiguous() for k, v in state.items() if ".lora_" in k}
    if not lora:
        raise CheckpointError(f"{weights}: no LoRA keys ('*.lora_A.weight')")
    rank = int(published["r"])
    for key, value in lora.items():
        side = value.shape[0] if ".lora_A." in key else value.shape[1]
        if side != rank:
            raise CheckpointError(f"{weights}: key {key!r} has rank {side}, the config says {rank}")
    LoraConfig(
        r=rank,
        lora_alpha=published["lora_alpha"],
        target_modules=list(published["target_modules"]),
        lora_dropout=float(published.get("lora_dropout", 0.0)),
        bias=published.get("bias", "none"),
        task_type="CAUSAL_LM",
        base_model_name_or_path=published.get("base_model_name_or_path"),
    ).save_pretrained(str(out))
    save_file(lora, str(out / "adapter_model.safetensors"))
    return state, weights


def radialog_preprocess() -> PreprocessConfig:
    """RaDialog's image transform: the square centre at 512 px, no normalisation (the crops
    are the vision config's)."""
    return PreprocessConfig(image_size=RESIZE, resize_mode="crop", voi="dicom", channels=3,
                            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def radialog_classifier(parts: ClassifierParts) -> ClassifierConfig:
    """The classifier config of RaDialog's CheXpert classifier (v1 and v2)."""
    return ClassifierConfig(labels=LABELS, kind="biovil_t", biovil_t=parts.sizes.to_dict(),
                            crop=CLASSIFIER_CROP, hidden_size=parts.hidden, grid_pool=4)


def radialog_prompt(first_turn: str, placeholder: str, tokenization: str) -> PromptConfig:
    """RaDialog's prompt (v1 and v2): Vicuna v1.1, its system message and report request,
    its findings rule."""
    return PromptConfig(
        system_prompt=SYSTEM,
        image_placeholder=placeholder,
        report_instruction=REPORT_INSTRUCTION,
        no_findings_text="no common findings",
        first_turn=first_turn,
        image_tokenization=tokenization,  # type: ignore[arg-type]
        list_no_finding=True,
        conversation=ConversationConfig(style="two", roles=("USER", "ASSISTANT"),
                                        sep=" ", sep2="</s>"),
    )


def radialog_config(
    vision_sizes: dict[str, object],
    classifier: ClassifierParts,
    qformer: dict[str, int],
    queries: int,
    llm_width: int,
) -> ModelConfig:
    """The bundle config of a RaDialog v1 import: its sizes, crops, prompt and decoding."""
    return ModelConfig(
        preprocess=radialog_preprocess(),
        vision=VisionConfig(kind="biovil_t", biovil_t=vision_sizes, crop=QFORMER_CROP,
                            tokens="channels_first"),
        classifier=radialog_classifier(classifier),
        aligner=AlignerConfig(kind="qformer", num_query_tokens=queries, qformer=dict(qformer),
                              input_norm=True),
        llm_hidden_size=llm_width,
        prompt=radialog_prompt(FIRST_TURN, IMAGE_TOKEN, "separate_stripped"),
        generation=GenerationConfig(max_new_tokens=300, num_beams=1),
    )


def import_radialog(
    source: Path,
    out: Path,
    *,
    llm: Path,
    visual_projector: Path | None = None,
    name: str = "radialog-v1",
    version: str = "1",
    provenance: Provenance = DEFAULT_PROVENANCE,
) -> Path:
    """Turn a RaDialog v1 download into a bundle at ``out`` (written whole, or not at all).

    Parameters
    ----------
    source
        The RaDialog checkout with its downloaded weights (README layout).
    out
        The new bundle directory (must not exist).
    llm
        The Vicuna-7B v1.3 Hugging Face directory (referenced, not copied).
    visual_projector
        The replayed 1408-wide projector, when ``checkpoint_4.pth`` lacks it.
    name, version, provenance
        The bundle's identification and provenance.

    Raises
    ------
    CheckpointError
        For a missing file, a missing key or a shape that does not fit (named).
    """
    files = RadialogFiles.locate(source)
    biovil_state = state_dict(load_checkpoint(files.biovil), files.biovil)
    qformer_state = state_dict(load_checkpoint(files.qformer), files.qformer, "model")
    classifier = load_classifier(files.classifier)

    encoder = {k: v for k, v in image_model_state(biovil_state).items()
               if not k.startswith("projector.")}
    encoder.update(_visual_projector(qformer_state, files.qformer, visual_projector))
    try:
        vision_sizes = biovil_sizes(encoder, source=str(files.biovil))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    qformer, qformer_kwargs, feature_width = convert_qformer(qformer_state, files.qformer)
    if feature_width != vision_sizes.projector_width:
        raise CheckpointError(
            f"{files.qformer}: the Q-Former attends to {feature_width}-wide features, the "
            f"visual projector gives {vision_sizes.projector_width}"
        )
    ln_vision = {
        n: need(qformer_state, f"ln_vision.{n}", files.qformer) for n in ("weight", "bias")
    }
    check_shape(ln_vision["weight"], (feature_width,), "ln_vision.weight", files.qformer)
    query_tokens = need(qformer_state, "query_tokens", files.qformer)

    base = hf_config(llm)
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = Path(tmp) / "instruct"
        adapter, adapter_file = rewrite_adapter(files.adapter, adapter_dir)
        projection = {n: need(adapter, IMG_PROJ + n, adapter_file) for n in ("weight", "bias")}
        llm_width, hidden = projection["weight"].shape
        if hidden != qformer_kwargs["hidden_size"]:
            raise CheckpointError(
                f"{adapter_file}: key {IMG_PROJ + 'weight'!r} takes {hidden} inputs, the "
                f"Q-Former gives {qformer_kwargs['hidden_size']}"
            )
        if llm_width != base.hidden_size:
            raise CheckpointError(
                f"{adapter_file}: key {IMG_PROJ + 'weight'!r} projects to {llm_width}, the "
                f"LLM in {llm} is {base.hidden_size} wide"
            )
        config = radialog_config(
            vision_sizes.to_dict(), classifier, qformer_kwargs, int(query_tokens.shape[1]),
            int(llm_width),
        )
        tower = VisionTower(config).eval()
        weights = {f"encoder.model.{k}": v for k, v in encoder.items()} | classifier.weights
        weights["aligner.query_tokens"] = query_tokens
        weights |= {f"aligner.input_norm.{n}": v for n, v in ln_vision.items()}
        weights |= {f"aligner.qformer.{k}": v for k, v in qformer.items()}
        weights |= {f"aligner.projection.{n}": v for n, v in projection.items()}

        def origin(key: str) -> Path:
            if key.startswith("classifier."):
                return files.classifier
            if key.startswith("encoder."):
                return files.biovil
            return adapter_file if key.startswith("aligner.projection.") else files.qformer

        load_weights(tower, weights, origin)
        tokenizer = load_tokenizer(llm)
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        return write_imported_bundle(
            out, config=config, tower=tower, tokenizer=tokenizer, llm=llm,
            provenance=provenance, name=name, version=version,
            adapters={"instruct": adapter_dir},
        )


__all__ = [
    "classifier_file",
    "LABELS",
    "ClassifierParts",
    "RadialogFiles",
    "import_radialog",
    "load_classifier",
    "radialog_classifier",
    "radialog_config",
    "radialog_preprocess",
    "radialog_prompt",
    "rewrite_adapter",
]
