"""One loaded model per process: the worker and the dialog API share it.

Loading a bundle takes seconds (ONNX sessions, the LLM and its adapters), so a process loads
it once, on first use, and keeps it. Every load is followed by the model's self-test
(:func:`inference.selftest.self_test`, ``inference.self_test``): a model that fails it is not
kept, and for :data:`RETEST_AFTER_S` seconds every caller gets the same
:class:`~inference.selftest.SelfTestError` instead of a new load. :func:`get_model` is
thread-safe: concurrent first callers wait for one load. The cache is keyed by the
bundle's folder, so a different bundle (a newly promoted model version) is loaded next to,
not over, the one in use: jobs already running keep their model object.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node._privacy import describe_exception
from dicom_node.settings import InferenceSettings

if TYPE_CHECKING:
    from inference import ChestXrayVLM

logger = logging.getLogger(__name__)

#: Seconds a failed self-test is answered from memory before the bundle is loaded again.
RETEST_AFTER_S = 300.0

_lock = threading.Lock()
_models: dict[Path, ChestXrayVLM] = {}
_failures: dict[Path, tuple[float, Exception]] = {}


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
    inference.selftest.SelfTestError
        When the loaded model fails its self-test (``check`` names the part).
    """
    from inference import ChestXrayVLM
    from inference.selftest import self_test

    key = (bundle or inference.bundle).resolve()
    with _lock:
        model = _models.get(key)
        if model is None:
            failed = _failures.get(key)
            if failed is not None and time.monotonic() - failed[0] < RETEST_AFTER_S:
                raise failed[1]
            started = time.perf_counter()
            model = ChestXrayVLM.from_bundle(key, inference.runtime_options())
            if inference.self_test:
                try:
                    result = self_test(model)
                except Exception as exc:
                    _failures[key] = (time.monotonic(), exc)
                    logger.error("model %s %s is not usable: %s", model.name, model.version,
                                 describe_exception(exc))
                    raise
                logger.info("model self-test passed in %.1f s: %s", result.seconds,
                            ", ".join(result.checks))
            _failures.pop(key, None)
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
        _failures.clear()
    return len(dropped)


__all__ = ["RETEST_AFTER_S", "forget_models", "get_model"]
