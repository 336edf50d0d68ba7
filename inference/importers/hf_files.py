"""Reading a transformers checkpoint directory: its safetensors (one file or shards with an
index), the tensors under a prefix, and its image processor's transform.

Shared by the ``hf`` importer and the importers of checkpoints that follow transformers'
layout without its code (MAIRA-2).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, PretrainedConfig

from inference.config import PreprocessConfig
from inference.errors import CheckpointError
from inference.importers.checkpoints import load_checkpoint, read_json, state_dict

#: A LLaVA-family language model's weights under its own names
#: (``from_pretrained(key_mapping=...)``), in the layouts transformers 4 and 5 save.
LLAVA_LLM_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^model\.language_model\.": "model.",
}

def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the file that holds it: safetensors (one file, or shards with an
    index) or, as older LLaVA-code checkpoints are saved, ``pytorch_model*.bin`` (read
    without running code, :func:`~inference.importers.checkpoints.load_checkpoint`)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index}: missing key 'weight_map'")
            return {name: directory / file for name, file in weight_map.items()}
    single = directory / "model.safetensors"
    if single.is_file():
        try:
            with safe_open(str(single), "pt") as handle:
                return {name: single for name in handle.keys()}  # noqa: SIM118 - safe_open API
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{single}: not a safetensors file ({exc})") from exc
    pickled = directory / "pytorch_model.bin"
    if pickled.is_file():
        return dict.fromkeys(state_dict(load_checkpoint(pickled), pickled), pickled)
    raise CheckpointError(
        f"{directory}: no model.safetensors(.index.json) or pytorch_model.bin(.index.json)"
    )


def read_prefixed(files: Mapping[str, Path], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (prefix stripped), read from their shards only."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        if name.startswith(prefix):
            by_file.setdefault(path, []).append(name)
    tensors = {}
    for path, names in by_file.items():
        if path.suffix != ".safetensors":
            shard = state_dict(load_checkpoint(path), path)
            for name in names:
                if name not in shard:
                    raise CheckpointError(f"{path}: missing key {name!r} (named by its index)")
                tensors[name[len(prefix):]] = shard[name]
            continue
        try:
            with safe_open(str(path), "pt") as handle:
                for name in names:
                    tensors[name[len(prefix):]] = handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from exc
    return tensors


def typed_config(data: Any, model_type: str, path: Path, key: str = "") -> PretrainedConfig:
    """A config dict (a whole ``config.json``, or its part under ``key``) read as the
    transformers config class of ``model_type``.

    Raises
    ------
    CheckpointError
        When the dict is missing, names another model type, or does not make a config,
        naming ``path`` and ``key``.
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: missing key {key!r}")
    if data.get("model_type") != model_type:
        raise CheckpointError(
            f"{path}: {key + '.' if key else ''}model_type {data.get('model_type')!r} is "
            f"not {model_type!r}"
        )
    values = {k: v for k, v in data.items() if k != "model_type"}
    try:
        return AutoConfig.for_model(model_type, **values)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{path}: {key + ' is ' if key else ''}not a {model_type} config ({exc})"
        ) from exc


def current_names(
    config: PretrainedConfig, tensors: Mapping[str, torch.Tensor], where: Path
) -> dict[str, torch.Tensor]:
    """A transformers model's tensors, as published, under the names of the installed
    transformers' module (it renames some on loading: Dinov2's ``attention.attention.query``
    is ``attention.q_proj`` in transformers 5). The tensors go through its own
    ``from_pretrained``, from a temporary folder holding only them.

    Raises
    ------
    CheckpointError
        When the model needs a tensor that is not there, naming ``where``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()},
                  str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(tmp)
        try:
            model, info = AutoModel.from_pretrained(
                tmp, config=config, output_loading_info=True, local_files_only=True,
                trust_remote_code=False,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{where}: the tensors do not load ({exc})") from exc
    if info["missing_keys"]:
        missing = sorted(info["missing_keys"])
        raise CheckpointError(f"{where}: missing key {missing[0]!r} ({len(missing)} missing)")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def find_prefix(
    files: Mapping[str, Path], prefixes: tuple[str, ...], probe: str, where: Path
) -> str:
    """The first of ``prefixes`` under which ``probe`` is a tensor name."""
    for prefix in prefixes:
        if prefix + probe in files:
            return prefix
    raise CheckpointError(f"{where}: missing key {prefixes[0] + probe!r}")


def image_transform(directory: Path, *, crop: bool = True) -> PreprocessConfig:
    """The image transform of ``preprocessor_config.json``: CLIP's resize and centre crop,
    or (``crop=False``) Gemma 3's resize of the whole image to its square size."""
    path = directory / "preprocessor_config.json"
    data = read_json(path, "the image transform")
    key = "crop_size" if crop else "size"
    size = (data.get("crop_size") or data.get("size")) if crop else data.get("size")
    side = size.get("height") if isinstance(size, dict) else size
    if not isinstance(side, int):
        raise CheckpointError(f"{path}: missing key '{key}.height'")
    if isinstance(size, dict) and size.get("width", side) != side:
        raise CheckpointError(f"{path}: {key} {size} is not square")
    if data.get("do_pan_and_scan"):
        raise CheckpointError(f"{path}: do_pan_and_scan (extra crops) is not supported")
    for name in ("image_mean", "image_std"):
        if not isinstance(data.get(name), list) or len(data[name]) != 3:
            raise CheckpointError(f"{path}: missing key {name!r} (three values)")
    return PreprocessConfig(
        image_size=side, resize_mode="crop" if crop else "stretch", voi="dicom", channels=3,
        mean=tuple(float(v) for v in data["image_mean"]),
        std=tuple(float(v) for v in data["image_std"]),
    )


__all__ = [
    "LLAVA_LLM_KEY_MAPPING",
    "current_names",
    "find_prefix",
    "image_transform",
    "read_prefixed",
    "typed_config",
    "weight_files",
]
