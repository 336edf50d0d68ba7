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

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file
from transformers import AutoConfig, AutoTokenizer

from inference.backbones.biovil_t import biovil_sizes, image_model_state
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
from inference.importers.checkpoints import check_shape, load_checkpoint, need, state_dict
from inference.packaging import package_bundle
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
        if not source.is_dir():
            raise CheckpointError(f"{source}: not a directory (a RaDialog v1 download)")
        adapters = _find(source, f"{ADAPTER_DIR}/checkpoint-*/adapter_model.bin",
                         "**/checkpoint-*/adapter_model.bin", "the instruct adapter")
        return cls(
            biovil=_find(source, BIOVIL_NAME, f"**/{BIOVIL_NAME}",
                         "the BioViL-T weights (microsoft/BiomedVLP-BioViL-T)"),
            qformer=_find(source, QFORMER_PATH, f"**/{QFORMER_NAME}", "the stage-1 Q-Former"),
            classifier=_find(source, f"{CLASSIFIER_DIR}/{CLASSIFIER_GLOB}",
                             f"**/{CLASSIFIER_GLOB}", "the CheXpert classifier"),
            adapter=adapters.parent,
        )


def _find(source: Path, usual: str, anywhere: str, what: str) -> Path:
    for pattern in (usual, anywhere):
        found = sorted(source.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(source)) for p in found)
            raise CheckpointError(f"{source}: more than one file for {what}: {names}")
    raise CheckpointError(f"{source}: no file for {what} (looked for {usual})")


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


def _adapter(directory: Path, hidden: int, out: Path) -> tuple[dict[str, torch.Tensor], int]:
    """Split the published adapter into its LoRA part (written to ``out`` in today's peft
    format) and ``img_proj_layer``; return the latter and the LLM width it projects to."""
    weights = directory / "adapter_model.bin"
    if not weights.is_file():
        weights = directory / "adapter_model.safetensors"
    state = state_dict(load_checkpoint(weights), weights)
    config_path = directory / "adapter_config.json"
    try:
        published = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{config_path}: no such file") from exc
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not JSON ({exc})") from exc
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in published:
            raise CheckpointError(f"{config_path}: missing key {key!r}")
    projection = {
        "weight": need(state, IMG_PROJ + "weight", weights),
        "bias": need(state, IMG_PROJ + "bias", weights),
    }
    llm_width, qformer_width = projection["weight"].shape
    if qformer_width != hidden:
        raise CheckpointError(
            f"{weights}: key {IMG_PROJ + 'weight'!r} takes {qformer_width} inputs, the "
            f"Q-Former gives {hidden}"
        )
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
    return projection, int(llm_width)


def radialog_config(
    vision_sizes: dict[str, object],
    classifier_sizes: dict[str, object],
    classifier_hidden: int,
    qformer: dict[str, int],
    queries: int,
    llm_width: int,
) -> ModelConfig:
    """The bundle config of a RaDialog v1 import: its sizes, crops, prompt and decoding."""
    return ModelConfig(
        preprocess=PreprocessConfig(
            image_size=RESIZE, resize_mode="crop", voi="dicom", channels=3,
            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        ),
        vision=VisionConfig(kind="biovil_t", biovil_t=vision_sizes, crop=QFORMER_CROP,
                            tokens="channels_first"),
        classifier=ClassifierConfig(
            labels=LABELS, kind="biovil_t", biovil_t=classifier_sizes, crop=CLASSIFIER_CROP,
            hidden_size=classifier_hidden, grid_pool=4,
        ),
        aligner=AlignerConfig(kind="qformer", num_query_tokens=queries, qformer=dict(qformer),
                              input_norm=True),
        llm_hidden_size=llm_width,
        prompt=PromptConfig(
            system_prompt=SYSTEM,
            image_placeholder=IMAGE_TOKEN,
            report_instruction=REPORT_INSTRUCTION,
            no_findings_text="no common findings",
            first_turn=FIRST_TURN,
            image_tokenization="separate_stripped",
            list_no_finding=True,
            conversation=ConversationConfig(style="two", roles=("USER", "ASSISTANT"),
                                            sep=" ", sep2="</s>"),
        ),
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
    classifier_state = state_dict(load_checkpoint(files.classifier), files.classifier,
                                  "state_dict")

    encoder = {k: v for k, v in image_model_state(biovil_state).items()
               if not k.startswith("projector.")}
    encoder.update(_visual_projector(qformer_state, files.qformer, visual_projector))
    try:
        vision_sizes = biovil_sizes(encoder, source=str(files.biovil))
        classifier_encoder = image_model_state(classifier_state, "model.biovil_encoder.")
        classifier_sizes = biovil_sizes(classifier_encoder, source=str(files.classifier))
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
    fc1 = need(classifier_state, "model.fc1.weight", files.classifier)
    fc2 = need(classifier_state, "model.fc2.weight", files.classifier)
    check_shape(fc2, (len(LABELS), fc1.shape[0]), "model.fc2.weight", files.classifier)

    try:
        llm_config = AutoConfig.from_pretrained(str(llm), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{llm}: not a Hugging Face model directory ({exc})") from exc
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = Path(tmp) / "instruct"
        projection, llm_width = _adapter(files.adapter, qformer_kwargs["hidden_size"], adapter_dir)
        if llm_width != llm_config.hidden_size:
            raise CheckpointError(
                f"{files.adapter / 'adapter_model.bin'}: key {IMG_PROJ + 'weight'!r} projects "
                f"to {llm_width}, the LLM in {llm} is {llm_config.hidden_size} wide"
            )
        config = radialog_config(
            vision_sizes.to_dict(), classifier_sizes.to_dict(), int(fc1.shape[0]),
            qformer_kwargs, int(query_tokens.shape[1]), llm_width,
        )
        tower = VisionTower(config).eval()
        weights = {f"encoder.model.{k}": v for k, v in encoder.items()}
        weights |= {f"classifier.biovil_encoder.{k}": v for k, v in classifier_encoder.items()}
        for part in ("fc1", "fc2"):
            for n in ("weight", "bias"):
                key = f"model.{part}.{n}"
                weights[f"classifier.{part}.{n}"] = need(classifier_state, key, files.classifier)
        weights["aligner.query_tokens"] = query_tokens
        weights |= {f"aligner.input_norm.{n}": v for n, v in ln_vision.items()}
        weights |= {f"aligner.qformer.{k}": v for k, v in qformer.items()}
        weights |= {f"aligner.projection.{n}": v for n, v in projection.items()}
        _load_tower(tower, weights, files)

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(llm), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{llm}: no loadable tokenizer ({exc})") from exc
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token
        return package_bundle(
            out,
            config=config,
            tower=tower,
            thresholds={label: 0.5 for label in LABELS},
            tokenizer=tokenizer,
            llm=llm,
            reference_base=True,
            adapters={"instruct": adapter_dir},
            tasks={"report": "instruct", "chat": "instruct"},
            name=name,
            version=version,
            int8=False,
            provenance=provenance,
        )


def _load_tower(tower: VisionTower, weights: dict[str, torch.Tensor], files: RadialogFiles) -> None:
    expected = tower.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(f"{files.qformer.parent}: no weights for {missing[0]!r} "
                              f"({len(missing)} missing)")
    for key, value in weights.items():
        if key not in expected:
            raise CheckpointError(f"internal: {key!r} is not a tower key")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{_origin(key, files)}: {key!r} has shape {tuple(value.shape)}, the model "
                f"built from the files' sizes needs {tuple(expected[key].shape)}"
            )
    tower.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, strict=True)


def _origin(key: str, files: RadialogFiles) -> Path:
    if key.startswith("classifier."):
        return files.classifier
    if key.startswith("encoder."):
        return files.biovil
    if key.startswith("aligner.projection."):
        return files.adapter
    return files.qformer


__all__ = ["LABELS", "RadialogFiles", "import_radialog", "radialog_config"]
