"""Stage checkpoints: trained weights, optimiser and scheduler state, config, step, best metric.

A checkpoint holds only the parameters the stage trains (the frozen LLM is not copied), plus
the random-number states, so ``--resume`` continues the same run: the next batch, learning
rate and dropout masks are those an uninterrupted run would have used. Files are written to a
temporary name and renamed, so a crash never leaves a truncated checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.errors import CheckpointError

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class CheckpointState:
    """Everything needed to resume a stage."""

    stage: str
    step: int
    best_metric: float | None
    done: bool
    config: dict[str, Any]
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    best_trainable: dict[str, torch.Tensor] | None = None
    rng: dict[str, Any] = field(default_factory=dict)


def capture_rng() -> dict[str, Any]:
    """Random-number states of Python, numpy and torch (CPU and CUDA)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng` (missing entries are skipped)."""
    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: CheckpointState) -> None:
    """Write a checkpoint atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state.__dict__, partial)
    partial.replace(path)


def load_checkpoint(path: Path, stage: str) -> CheckpointState:
    """Read a checkpoint written by :func:`save_checkpoint` for ``stage``.

    Raises
    ------
    CheckpointError
        When the file is unreadable or belongs to another stage.
    """
    try:
        raw = torch.load(path, map_location="cpu", weights_only=False)
        state = CheckpointState(**raw)
    except (OSError, RuntimeError, TypeError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({exc})") from exc
    if state.stage != stage:
        raise CheckpointError(f"{path}: checkpoint of stage {state.stage!r}, not {stage!r}")
    return state


__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointState",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "save_checkpoint",
]
