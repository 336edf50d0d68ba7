"""A short self-test of a loaded model: does every part the node uses actually run?

A bundle can load and still fail on first use: a transformers release that changed what a
decoding loop receives, an ONNX file the installed runtime cannot execute, an adapter that
does not fit its base model. :func:`self_test` runs each part once on a synthetic image, the
way a report job and a dialog turn run them, so a broken model is found when it is loaded
rather than job by job:

``vision``
    one synthetic image through preprocessing, the vision tower, the findings head and the
    aligner; the probabilities must be finite and in [0, 1], the image tokens finite.
``adapter:<name>``
    a few tokens generated through each task's adapter (``report``, ``chat``) with the
    model's own decoding settings (lookup decoding included), from the real prompt.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from inference.errors import InferenceError
from inference.generation import generate_ids

if TYPE_CHECKING:
    from inference.model import ChestXrayVLM

#: Tokens generated per adapter.
SELF_TEST_TOKENS = 4


class SelfTestError(InferenceError):
    """A part of a loaded model does not run; ``check`` names it, the message says why."""

    def __init__(self, check: str, reason: str) -> None:
        super().__init__(f"self-test {check} failed: {reason}")
        self.check = check
        self.reason = reason


@dataclass(frozen=True)
class SelfTestResult:
    """The checks that passed and how long the self-test took."""

    checks: tuple[str, ...]
    seconds: float


def synthetic_chest_image(size: int = 256) -> np.ndarray:
    """A smooth grey image with two dark lung fields (display convention: bone bright)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = 0.75 - 0.25 * y
    for centre in (0.32, 0.68):
        lung = ((x - centre) / 0.16) ** 2 + ((y - 0.5) / 0.3) ** 2 < 1.0
        image[lung] = 0.2
    return np.clip(image, 0.0, 1.0)


def self_test(model: ChestXrayVLM, tokens: int = SELF_TEST_TOKENS) -> SelfTestResult:
    """Run every part of ``model`` once (see the module docstring).

    Raises
    ------
    SelfTestError
        For the first check that fails; ``check`` names it.
    """
    started = time.perf_counter()
    passed: list[str] = []
    try:
        analysis = model.analyse([synthetic_chest_image()])
        probabilities = np.array([f.probability for f in analysis.findings])
        if not np.all(np.isfinite(probabilities)) or not np.all(
            (probabilities >= 0) & (probabilities <= 1)
        ):
            raise ValueError("finding probabilities are not in [0, 1]")
        if not bool(torch.isfinite(analysis.image_tokens).all()):
            raise ValueError("image tokens are not finite")
    except Exception as exc:  # noqa: BLE001 - any failure of the part fails the check
        raise SelfTestError("vision", f"{type(exc).__name__}: {exc}") from exc
    passed.append("vision")
    options = replace(model.config.generation, max_new_tokens=tokens, num_beams=1)
    prompts = {
        "report": model._report_prompt(analysis, None),
        "chat": model.prompts.encode(
            findings=model.prompt_findings(analysis),
            indication=None,
            report="No acute cardiopulmonary abnormality.",
            history=(),
            instruction="Is there a pleural effusion?",
        ),
    }
    for task, prompt in prompts.items():
        if task not in model.tasks:
            continue
        adapter = model.tasks[task]
        check = f"adapter:{adapter or 'base'}"
        if check in passed:
            continue
        try:
            ids = generate_ids(
                model.llm,
                model._batch([prompt], [analysis]),
                options,
                adapter=adapter,
                lookup=model.lookup,
            )
            if ids.ndim != 2 or ids.shape[1] < 1:
                raise ValueError("no token was generated")
        except Exception as exc:  # noqa: BLE001
            raise SelfTestError(check, f"{type(exc).__name__}: {exc}") from exc
        passed.append(check)
    return SelfTestResult(tuple(passed), time.perf_counter() - started)


__all__ = [
    "SELF_TEST_TOKENS",
    "SelfTestError",
    "SelfTestResult",
    "self_test",
    "synthetic_chest_image",
]
