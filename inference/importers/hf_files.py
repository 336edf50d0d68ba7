"""Reading a transformers checkpoint directory: its safetensors (one file or shards with an
index), the tensors under a prefix, and its image processor's transform.

Shared by the ``hf`` importer and the importers of checkpoints that follow transformers'
layout without its code (MAIRA-2).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from inference.config import PreprocessConfig
from inference.errors import CheckpointError
from inference.importers.checkpoints import read_json

#: A LLaVA-family language model's weights under its own names
#: (``from_pretrained(key_mapping=...)``), in the layouts transformers 4 and 5 save.
LLAVA_LLM_KEY_MAPPING = {
    r"^language_model\.model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
    r"^model\.language_model\.": "model.",
}

def weight_files(directory: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file that holds it (one file, or shards with an
    index)."""
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: missing key 'weight_map'")
        return {name: directory / file for name, file in weight_map.items()}
    single = directory / "model.safetensors"
    if not single.is_file():
        raise CheckpointError(f"{directory}: no model.safetensors(.index.json)")
    try:
        with safe_open(str(single), "pt") as handle:
            return {name: single for name in handle.keys()}  # noqa: SIM118 - safe_open API
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{single}: not a safetensors file ({exc})") from exc


def read_prefixed(files: Mapping[str, Path], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors under ``prefix`` (prefix stripped), read from their shards only."""
    by_file: dict[Path, list[str]] = {}
    for name, path in files.items():
        if name.startswith(prefix):
            by_file.setdefault(path, []).append(name)
    tensors = {}
    for path, names in by_file.items():
        try:
            with safe_open(str(path), "pt") as handle:
                for name in names:
                    tensors[name[len(prefix):]] = handle.get_tensor(name)
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: unreadable ({exc})") from exc
    return tensors


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
    "find_prefix",
    "image_transform",
    "read_prefixed",
    "weight_files",
]
