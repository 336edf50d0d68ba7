"""RaDialog v2 (github.com/ChantalMP/RaDialog_LLaVA, RaDialog-LLaVA) as a node bundle.

The hub repository ``ChantalPellegrini/RaDialog-interactive-radiology-report-generation``
holds the fine-tune; its base is LLaVA-1.5-7B in the original LLaVA layout
(``liuhaotian/llava-v1.5-7b``, ``--llm``):

==========================================  =============================================
published file                              bundle
==========================================  =============================================
``non_lora_trainables.bin``                 ``vision.onnx``: the fine-tuned BioViL-T
(``...model.vision_tower.*``,               (one token per grid cell of its fused map, 512
``...model.mm_projector.*``)                wide) and the ``mlp2x_gelu`` projector
``findings_classifier/.../*.ckpt``          ``vision.onnx``: the CheXpert classifier (as v1)
``adapter_model.bin``, ``adapter_config``   ``adapters/instruct`` in today's peft format
LLaVA-1.5-7B (``--llm``)                    referenced and checksummed; its LLaMA weights
                                            read as ``LlamaForCausalLM`` with the config
                                            built from its ``config.json`` (``llm_config/``)
==========================================  =============================================

Decided deliberately: the BioViL-T runs with its BatchNorm in eval mode (the saved running
statistics). RaDialog-LLaVA's own code never calls ``eval()`` on the tower, so its demo
normalises each image with that batch's statistics; a report would then depend on which
images are batched together. docs/models.md says so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig

from inference.backbones.biovil_t import biovil_sizes, image_model_state
from inference.bundle import Provenance
from inference.config import AlignerConfig, GenerationConfig, ModelConfig, VisionConfig
from inference.errors import CheckpointError, ConfigError
from inference.importers.checkpoints import (
    load_checkpoint,
    load_tokenizer,
    load_weights,
    need,
    read_json,
    state_dict,
    write_imported_bundle,
)
from inference.importers.radialog import (
    QFORMER_CROP,
    classifier_file,
    load_classifier,
    radialog_classifier,
    radialog_preprocess,
    radialog_prompt,
    rewrite_adapter,
)
from inference.vision import VisionTower

NON_LORA = ("non_lora_trainables_extended.bin", "non_lora_trainables.bin")
FIRST_TURN = "{image}. Predicted Findings: {findings}. {context}{instruction}"

DEFAULT_PROVENANCE = Provenance(
    source="RaDialog v2 / RaDialog-LLaVA (ChantalPellegrini/RaDialog-interactive-radiology-"
    "report-generation), imported by dicom_node model import",
    licence=(
        "RaDialog-LLaVA weights: apache-2.0 (hub card); LLaVA-1.5-7B base: Llama 2 Community "
        "License; BioViL-T: MIT, its model card puts any deployed use out of scope"
    ),
    intended_use="Research use only; not a medical device. Every draft needs a radiologist.",
)


def non_lora_weights(source: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """The weights a LLaVA-code LoRA fine-tune saves beside its adapter
    (``non_lora_trainables.bin``: projector, tuned tower), under the model's own names
    (``model.mm_projector.*``), and the file they came from.

    Raises
    ------
    CheckpointError
        When ``source`` holds no such file.
    """
    for name in NON_LORA:
        path = source / name
        if path.is_file():
            raw = state_dict(load_checkpoint(path), path)
            state = {}
            for key, value in raw.items():
                key = key.removeprefix("module.").removeprefix("base_model.")
                if key.startswith("model.model."):
                    key = key[len("model."):]
                state[key] = value
            return state, path
    raise CheckpointError(f"{source}: no file for the non-LoRA weights ({NON_LORA[1]})")


def llava_llm_config(llm: Path) -> LlamaConfig:
    """A LLaVA-code base model's language model config: its ``config.json`` (the original
    LLaVA layout, ``model_type: llava``, or a plain LLaMA) read as the LLaMA it is."""
    path = llm / "config.json"
    raw = read_json(path)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if key not in raw:
            raise CheckpointError(f"{path}: missing key {key!r}")
    kept = {k: v for k, v in raw.items() if not k.startswith(("mm_", "tune_mm", "freeze_mm"))}
    kept.update(model_type="llama", architectures=["LlamaForCausalLM"])
    return LlamaConfig.from_dict(kept)


def import_radialog_llava(
    source: Path,
    out: Path,
    *,
    llm: Path,
    name: str = "radialog-v2",
    version: str = "1",
    provenance: Provenance = DEFAULT_PROVENANCE,
) -> Path:
    """Turn a RaDialog-LLaVA download into a bundle at ``out`` (written whole, or not at all).

    Parameters
    ----------
    source
        The hub repository's files (``non_lora_trainables.bin``, the adapter, the
        classifier under ``findings_classifier/``).
    out
        The new bundle directory (must not exist).
    llm
        LLaVA-1.5-7B in the original LLaVA layout (referenced, not copied).

    Raises
    ------
    CheckpointError
        For a missing file or key, or a shape that does not fit (named).
    """
    if not source.is_dir():
        raise CheckpointError(f"{source}: not a directory (a RaDialog-LLaVA download)")
    state, non_lora = non_lora_weights(source)
    tower = image_model_state(state, "model.vision_tower.")
    try:
        sizes = biovil_sizes(tower, source=str(non_lora))
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from exc
    projector = {f"{i}.{n}": need(state, f"model.mm_projector.{i}.{n}", non_lora)
                 for i in (0, 2) for n in ("weight", "bias")}
    fused = 2 * sizes.vit_width
    if projector["0.weight"].shape[1] != fused:
        raise CheckpointError(
            f"{non_lora}: key 'model.mm_projector.0.weight' takes "
            f"{projector['0.weight'].shape[1]} inputs, the BioViL-T gives {fused}"
        )
    llm_width = int(projector["2.weight"].shape[0])
    llm_config = llava_llm_config(llm)
    if llm_config.hidden_size != llm_width:
        raise CheckpointError(
            f"{non_lora}: key 'model.mm_projector.2.weight' projects to {llm_width}, the LLM in "
            f"{llm} is {llm_config.hidden_size} wide"
        )
    classifier_path = classifier_file(source)
    classifier = load_classifier(classifier_path)

    config = ModelConfig(
        preprocess=radialog_preprocess(),
        vision=VisionConfig(kind="biovil_t", biovil_t=sizes.to_dict(), crop=QFORMER_CROP,
                            tokens="patches"),
        classifier=radialog_classifier(classifier),
        aligner=AlignerConfig(kind="mlp", mlp_hidden_size=int(projector["0.weight"].shape[0])),
        llm_hidden_size=llm_width,
        # LLaVA's tokenizer_image_token: each side of <image> encoded on its own
        prompt=radialog_prompt(FIRST_TURN, "<image>", "separate"),
        generation=GenerationConfig(max_new_tokens=300, num_beams=1),
    )
    weights = {f"encoder.model.{k}": v for k, v in tower.items()} | classifier.weights
    weights |= {f"aligner.mlp.{k}": v for k, v in projector.items()}
    vision = VisionTower(config).eval()
    load_weights(vision, weights,
                 lambda key: classifier_path if key.startswith("classifier.") else non_lora)

    return write_lora_bundle(out, source, config=config, tower=vision, llm=llm,
                             llm_config=llm_config, provenance=provenance, name=name,
                             version=version)


def write_lora_bundle(
    out: Path,
    source: Path,
    *,
    config: ModelConfig,
    tower: VisionTower,
    llm: Path,
    llm_config: LlamaConfig,
    provenance: Provenance,
    name: str,
    version: str,
) -> Path:
    """Write the bundle of a LLaVA-code LoRA fine-tune: its adapter in ``source`` (rewritten
    to today's peft format as ``instruct``, used by every task) over the base ``llm``,
    referenced where it is, with its tokenizer."""
    with tempfile.TemporaryDirectory() as tmp:
        adapter_dir = Path(tmp) / "instruct"
        rewrite_adapter(source, adapter_dir)
        return write_imported_bundle(
            out, config=config, tower=tower, tokenizer=load_tokenizer(llm), llm=llm,
            provenance=provenance, name=name, version=version,
            adapters={"instruct": adapter_dir}, llm_config=llm_config,
        )


__all__ = ["import_radialog_llava", "llava_llm_config", "non_lora_weights", "write_lora_bundle"]
