"""One loaded model per process: the worker and the dialog API share it.

Loading a bundle takes seconds (ONNX sessions, the LLM and its adapters), so a process loads
it once, on first use, and keeps it. :func:`get_model` is thread-safe: concurrent first
callers wait for one load. The cache is keyed by the bundle's folder, so a different
bundle (a newly promoted model version) is loaded next to, not over, the one in use: jobs
already running keep their model object.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import InferenceSettings

if TYPE_CHECKING:
    from inference import ChestXrayVLM

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_models: dict[Path, ChestXrayVLM] = {}


def get_model(inference: InferenceSettings, bundle: Path | None = None) -> ChestXrayVLM:
    """The process's model for a bundle, loaded on first use.

    Parameters
    ----------
    inference
        Runtime options (backend, precision, device, threads).
    bundle
        The bundle folder; defaults to ``inference.bundle``.

    Raises
    ------
    inference.BundleError
        When the bundle is missing, malformed or tampered with.
    """
    from inference import ChestXrayVLM

    key = (bundle or inference.bundle).resolve()
    with _lock:
        model = _models.get(key)
        if model is None:
            started = time.perf_counter()
            model = ChestXrayVLM.from_bundle(key, inference.runtime_options())
            _models[key] = model
            lookup = model.lookup
            logger.info(
                "model %s %s loaded in %.1f s (LLM %s on %s, %s)",
                model.name,
                model.version,
                time.perf_counter() - started,
                str(model.llm.dtype).removeprefix("torch."),
                model.llm.device,
                f"lookup decoding with {lookup.draft_tokens} proposed tokens"
                if lookup is not None
                else "plain greedy decoding: lookup_tokens is 0 or the bundle has no n-gram "
                "table (rebuild it to get one)",
            )
        return model


def forget_models(keep: Path | None = None) -> int:
    """Drop cached models (all, or all but `keep`); returns how many were dropped.

    A model still used by a running job stays alive until that job ends.
    """
    keep_key = keep.resolve() if keep is not None else None
    with _lock:
        dropped = [key for key in _models if key != keep_key]
        for key in dropped:
            del _models[key]
    return len(dropped)


__all__ = ["forget_models", "get_model"]
