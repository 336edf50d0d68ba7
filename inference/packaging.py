"""Writing a complete model bundle from trained components."""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from inference.bundle import (
    ADAPTERS_DIR,
    LLM_CONFIG_DIR,
    LLM_DIR,
    LOOKUP_TABLE,
    TOKENIZER_DIR,
    VISION_ONNX,
    VISION_ONNX_INT8,
    VISION_WEIGHTS,
    Provenance,
    copy_tree,
    write_manifest,
)
from inference.config import ModelConfig
from inference.errors import BundleError
from inference.onnx_export import export_vision_onnx
from inference.quantize import quantize_vision_onnx
from inference.speculative import NgramTable
from inference.vision import VisionTower

logger = logging.getLogger(__name__)


def save_vision_weights(tower: VisionTower, path: Path) -> None:
    """Save the vision tower's state dict as safetensors (contiguous CPU float32 copies)."""
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tower.state_dict().items()
    }
    save_file(state, str(path))


def load_vision_tower(config: ModelConfig, weights: str | PathLike[str]) -> VisionTower:
    """Rebuild the torch vision tower from a config and its safetensors weights.

    Raises
    ------
    BundleError
        When the weights do not match the architecture the config describes.
    """
    tower = VisionTower(config)
    try:
        tower.load_state_dict(load_file(str(weights)), strict=True)
    except RuntimeError as exc:
        raise BundleError(f"{weights}: weights do not match the model config ({exc})") from exc
    return tower.eval()


def package_bundle(
    out_dir: str | PathLike[str],
    *,
    config: ModelConfig,
    tower: VisionTower,
    thresholds: Mapping[str, float],
    tokenizer: PreTrainedTokenizerBase,
    llm: PreTrainedModel | str | PathLike[str],
    adapters: Mapping[str, str | PathLike[str]] | None = None,
    tasks: Mapping[str, str | None] | None = None,
    reference_base: bool = False,
    llm_config: PretrainedConfig | None = None,
    llm_key_mapping: Mapping[str, str] | None = None,
    name: str = "unnamed",
    version: str = "0",
    metrics: Mapping[str, Any] | None = None,
    int8: bool = True,
    lookup_table: NgramTable | None = None,
    provenance: Provenance | None = None,
) -> Path:
    """Write a bundle directory: ONNX + safetensors vision, tokenizer, LLM, adapters.

    The bundle is assembled in a temporary sibling directory and renamed into place, so a
    failure never leaves a half-written bundle at ``out_dir``.

    Parameters
    ----------
    out_dir
        Destination; must not exist yet.
    config, tower, thresholds
        The model config, its vision tower and one threshold per label.
    tokenizer
        The LLM tokenizer.
    llm
        The base LLM, as a model (saved into the bundle) or a local HF directory.
    adapters
        Adapter name -> saved peft adapter directory (copied into ``adapters/<name>``).
    tasks
        Task -> adapter name; defaults to ``report`` and ``chat`` using the ``report`` and
        ``instruct`` adapters when present.
    llm_config, llm_key_mapping
        For a language model inside a multimodal checkpoint (``llm`` then names that
        checkpoint's directory): the LLM's own config, written to ``llm_config/``, and the
        regex mapping of the checkpoint's weight names onto it.
    reference_base
        With ``llm`` given as a directory: record it by absolute path and checksums
        instead of copying it (saves disk when many bundles share one base model).
    name, version, metrics
        Provenance written to the manifest.
    int8
        Also write ``vision.int8.onnx``, the dynamically quantised vision tower that CPU
        hosts run by default (see :class:`~inference.model.RuntimeOptions`).
    lookup_table
        N-gram table of the report targets (tokenised with ``tokenizer``), written as
        ``lookup_ngrams.json`` for speculative decoding.
    provenance
        Source, licence and intended use (:class:`~inference.bundle.Provenance`).

    Returns
    -------
    pathlib.Path
        The bundle directory.
    """
    destination = Path(out_dir)
    if destination.exists():
        raise BundleError(f"{destination}: already exists; choose a new bundle directory")
    destination.parent.mkdir(parents=True, exist_ok=True)
    adapters = dict(adapters or {})
    if tasks is None:
        tasks = {
            "report": "report" if "report" in adapters else next(iter(adapters), None),
            "chat": "instruct" if "instruct" in adapters else next(iter(adapters), None),
        }
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        exporter = export_vision_onnx(
            tower, staging / VISION_ONNX, config.preprocess.image_size, config.preprocess.channels
        )
        if int8:
            quantize_vision_onnx(staging / VISION_ONNX, staging / VISION_ONNX_INT8)
        save_vision_weights(tower, staging / VISION_WEIGHTS)
        tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        llm_base: str | Path = LLM_DIR
        if isinstance(llm, PreTrainedModel):
            llm.save_pretrained(str(staging / LLM_DIR))
        elif reference_base:
            llm_base = Path(llm).resolve()
        else:
            copy_tree(llm, staging / LLM_DIR)
        if llm_config is not None:
            llm_config.save_pretrained(str(staging / LLM_CONFIG_DIR))
        if lookup_table is not None:
            lookup_table.save(staging / LOOKUP_TABLE)
        relative_adapters = {}
        for adapter_name, adapter_dir in adapters.items():
            rel = f"{ADAPTERS_DIR}/{adapter_name}"
            copy_tree(adapter_dir, staging / rel)
            relative_adapters[adapter_name] = rel
        write_manifest(
            staging,
            config=config,
            thresholds=thresholds,
            adapters=relative_adapters,
            tasks=tasks,
            llm_base=llm_base,
            name=name,
            version=version,
            exporter=exporter,
            metrics=metrics,
            provenance=provenance,
            llm_key_mapping=llm_key_mapping,
        )
        staging.rename(destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("wrote model bundle %s (%s exporter)", destination, exporter)
    return destination


__all__ = ["load_vision_tower", "package_bundle", "save_vision_weights"]
