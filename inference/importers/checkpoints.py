"""Reading published model files safely, with errors that name the file and the key.

What every importer needs: finding a file in a download, reading checkpoints, JSON configs,
an LLM's config and tokenizer, loading weights into the vision tower, and writing the
bundle.

Published medical models ship torch pickles (``.pth``, ``.pt``, ``.bin``, Lightning
``.ckpt``) and safetensors. Pickles are read with ``torch.load(weights_only=True)``: tensors,
numbers, strings and plain containers only, so a checkpoint cannot run code on the node. A
file that needs more (a pickled class) is refused with the reason.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from inference.bundle import Provenance
from inference.config import ModelConfig
from inference.errors import CheckpointError
from inference.packaging import package_bundle
from inference.vision import VisionTower


def load_checkpoint(path: Path) -> Any:
    """Load a checkpoint file (torch pickle or safetensors) without running its code.

    Raises
    ------
    CheckpointError
        When the file is missing, not a checkpoint, or pickles anything but tensors and
        plain containers.
    """
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{path}: not a safetensors file ({exc})") from exc
    with path.open("rb") as head:
        legacy_pickle = head.read(1) == b"\x80"
    if not zipfile.is_zipfile(path) and not legacy_pickle:
        raise CheckpointError(f"{path}: not a torch checkpoint (neither zip nor pickle)")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: holds more than tensors and plain containers, refused "
            f"(weights_only): {str(exc).splitlines()[0]}"
        ) from exc
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise CheckpointError(f"{path}: not a torch checkpoint ({type(exc).__name__})") from exc


def state_dict(
    checkpoint: Any, path: Path, container: str | None = None
) -> dict[str, torch.Tensor]:
    """The tensor mapping of a checkpoint, taken from ``container`` when given.

    Raises
    ------
    CheckpointError
        When the container key is missing or the mapping holds no tensors.
    """
    data = checkpoint
    if container is not None:
        if not isinstance(checkpoint, Mapping) or container not in checkpoint:
            raise CheckpointError(f"{path}: missing key {container!r} (the state dict)")
        data = checkpoint[container]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: not a state dict ({type(data).__name__})")
    tensors = {str(k): v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors")
    return tensors


def need(state: Mapping[str, torch.Tensor], key: str, path: Path) -> torch.Tensor:
    """``state[key]``, or an error naming the file and the key."""
    if key not in state:
        raise CheckpointError(f"{path}: missing key {key!r}")
    return state[key]


def check_shape(tensor: torch.Tensor, shape: tuple[int, ...], key: str, path: Path) -> None:
    """Refuse a tensor whose shape is not ``shape`` (naming the file and the key)."""
    if tuple(tensor.shape) != shape:
        raise CheckpointError(
            f"{path}: key {key!r} has shape {tuple(tensor.shape)}, expected {shape}"
        )


def load_weights(
    module: torch.nn.Module,
    weights: Mapping[str, torch.Tensor],
    origin: Callable[[str], Path],
) -> None:
    """Load every weight of ``module`` from ``weights`` (cast to its dtypes).

    ``origin(key)`` names the published file a module key comes from, for the errors.

    Raises
    ------
    CheckpointError
        When a key is missing, or a tensor's shape differs from the one the model built
        from the files' sizes needs (naming the file and the key).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(weights))
    if missing:
        raise CheckpointError(
            f"{origin(missing[0])}: no weights for {missing[0]!r} ({len(missing)} missing)"
        )
    for key, value in weights.items():
        if key not in expected:
            raise CheckpointError(f"{origin(key)}: {key!r} has no place in the model")
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"{origin(key)}: {key!r} has shape {tuple(value.shape)}, the model built "
                f"from the files' sizes needs {tuple(expected[key].shape)}"
            )
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in weights.items()}, strict=True)


def find_file(source: Path, patterns: Sequence[str], what: str) -> Path:
    """The one file for ``what`` in a download: the first pattern (a glob under ``source``)
    that matches exactly one file.

    Raises
    ------
    CheckpointError
        When no pattern matches, or one matches several files (all named).
    """
    if not source.is_dir():
        raise CheckpointError(f"{source}: not a directory (the model's files)")
    for pattern in patterns:
        found = sorted(source.glob(pattern))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(str(p.relative_to(source)) for p in found)
            raise CheckpointError(f"{source}: more than one file for {what}: {names}")
    raise CheckpointError(f"{source}: no file for {what} (looked for {patterns[0]})")


def read_json(path: Path, what: str = "") -> dict[str, Any]:
    """A JSON object from ``path``; ``what`` says in the error what the file is for."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path}: no such file{f' ({what})' if what else ''}") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    return data


def hf_config(directory: Path) -> PretrainedConfig:
    """The config of the Hugging Face model in ``directory``."""
    try:
        return AutoConfig.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: not a Hugging Face model directory ({exc})") from exc


def load_tokenizer(directory: Path, pad: str = "unk") -> PreTrainedTokenizerBase:
    """The tokenizer in ``directory``; without a pad token it pads with its ``unk`` (as
    LLaVA and RaDialog set it) or ``eos`` (as XrayGPT sets it) token."""
    try:
        # never the download's own code; and never transformers' question whether to run
        # it, which waits on the terminal when config.json has an auto_map
        tokenizer = AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory}: no loadable tokenizer ({exc})") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if pad == "unk" else tokenizer.eos_token
    return tokenizer


def backbone_prefix(tower: VisionTower) -> str:
    """Where a transformers vision model's own keys begin in a tower's state dict (its
    classes have named their parameters with and without a ``vision_model.`` level)."""
    nested = any(k.startswith("encoder.backbone.vision_model.") for k in tower.state_dict())
    return "encoder.backbone.vision_model." if nested else "encoder.backbone."


def write_imported_bundle(
    out: Path,
    *,
    config: ModelConfig,
    tower: VisionTower,
    tokenizer: PreTrainedTokenizerBase,
    llm: Path,
    provenance: Provenance,
    name: str,
    version: str,
    adapters: Mapping[str, Path] | None = None,
    llm_config: PretrainedConfig | None = None,
    llm_key_mapping: Mapping[str, str] | None = None,
) -> Path:
    """Write an imported model's bundle: the LLM referenced where it is (checksummed, not
    copied), thresholds 0.5 (the published models use one global threshold), no int8
    vision model (its accuracy is unmeasured for these models), every task on the single
    adapter when there is one."""
    adapters = dict(adapters or {})
    adapter = next(iter(adapters), None)
    return package_bundle(
        out,
        config=config,
        tower=tower,
        thresholds={label: 0.5 for label in config.classifier.labels},
        tokenizer=tokenizer,
        llm=llm,
        reference_base=True,
        llm_config=llm_config,
        llm_key_mapping=llm_key_mapping,
        adapters=adapters,
        tasks={"report": adapter, "chat": adapter},
        name=name,
        version=version,
        int8=False,
        provenance=provenance,
    )


__all__ = [
    "backbone_prefix",
    "check_shape",
    "find_file",
    "hf_config",
    "load_checkpoint",
    "load_tokenizer",
    "load_weights",
    "need",
    "read_json",
    "state_dict",
    "write_imported_bundle",
]
