"""Reading published checkpoint files safely, with errors that name the file and the key.

Published medical models ship torch pickles (``.pth``, ``.pt``, ``.bin``, Lightning
``.ckpt``) and safetensors. Pickles are read with ``torch.load(weights_only=True)``: tensors,
numbers, strings and plain containers only, so a checkpoint cannot run code on the node. A
file that needs more (a pickled class) is refused with the reason.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from inference.errors import CheckpointError


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


__all__ = ["check_shape", "load_checkpoint", "load_weights", "need", "state_dict"]
