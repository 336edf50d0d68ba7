"""ONNX Runtime execution of the exported vision tower."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from os import PathLike

import numpy as np

from inference.errors import InferenceError, RuntimeUnavailableError
from inference.onnx_export import INPUT_NAME, OUTPUT_NAMES

logger = logging.getLogger(__name__)


@dataclass
class OrtOptions:
    """ONNX Runtime session options (filled from the node's settings)."""

    providers: tuple[str, ...] = field(
        default=(), metadata={"help": "Execution providers; empty = CUDA when present, else CPU."}
    )
    intra_op_threads: int = field(default=0, metadata={"help": "0 = ONNX Runtime's default."})
    inter_op_threads: int = field(default=0, metadata={"help": "0 = ONNX Runtime's default."})

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ValueError("thread counts must be >= 0")


def _import_ort():  # type: ignore[no-untyped-def]
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "onnxruntime is not installed: install the 'cpu' extra (onnxruntime) or, on a "
            "CUDA host, the 'gpu' extra (onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def choose_providers(requested: tuple[str, ...] = ()) -> list[str]:
    """Return the providers to use: ``requested`` if given, else CUDA when present, then CPU.

    Raises
    ------
    RuntimeUnavailableError
        When a requested provider is not available in this ONNX Runtime build.
    """
    ort = _import_ort()
    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise RuntimeUnavailableError(
                f"ONNX Runtime provider(s) {missing} not available; this build has {available}"
            )
        return list(requested)
    preferred = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*preferred, "CPUExecutionProvider"]


class OnnxVisionRunner:
    """Runs ``vision.onnx``: preprocessed pixels -> probabilities and image embeddings.

    Parameters
    ----------
    path
        The ONNX file of a bundle.
    options
        Providers and thread counts.
    per_image
        Run a batch one image at a time. Needed for dynamically quantised (int8) models:
        their activation scales are computed over the whole input, so batching images
        together would make one image's probabilities depend on the others.
    """

    def __init__(
        self,
        path: str | PathLike[str],
        options: OrtOptions | None = None,
        *,
        per_image: bool = False,
    ) -> None:
        ort = _import_ort()
        options = options or OrtOptions()
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = choose_providers(options.providers)
        try:
            self.session = ort.InferenceSession(str(path), session_options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own pybind error types
            raise InferenceError(f"{path}: ONNX Runtime cannot load the model: {exc}") from exc
        self.providers = self.session.get_providers()
        self.per_image = per_image
        logger.info("vision runtime: ONNX Runtime with %s", ",".join(self.providers))

    def __call__(self, pixel_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(probabilities (B, L), image_embeddings (B, T, H))`` as float32 arrays."""
        batch = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if not self.per_image:
            probabilities, embeddings = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch})
            return probabilities, embeddings
        outputs = [
            self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch[i : i + 1]})
            for i in range(batch.shape[0])
        ]
        return (
            np.concatenate([probs for probs, _ in outputs]),
            np.concatenate([embeds for _, embeds in outputs]),
        )


__all__ = ["OnnxVisionRunner", "OrtOptions", "choose_providers"]
