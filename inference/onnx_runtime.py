"""ONNX Runtime execution of the exported vision tower."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from os import PathLike

import numpy as np
import torch

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
        self._sizes: list[tuple[int, ...]] | None = None
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


    def binds(self, device: torch.device) -> bool:
        """Whether :meth:`run_on` keeps the outputs on ``device`` without a host copy: a CUDA
        device with the CUDA provider in this session (the CPU is always bindable)."""
        if device.type == "cpu":
            return True
        return device.type == "cuda" and "CUDAExecutionProvider" in self.providers

    def run_on(
        self, pixel_values: np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run with ONNX Runtime's I/O binding, the outputs written straight into torch
        tensors on ``device``.

        On a GPU the image tokens stay in GPU memory from the vision graph to the LLM: the
        pixels go up once, and nothing comes back through numpy. Returns
        ``(probabilities (B, L), image_embeddings (B, T, H))`` as float32 tensors.

        Raises
        ------
        InferenceError
            When the session cannot bind ``device`` (see :meth:`binds`).
        """
        if not self.binds(device):
            raise InferenceError(
                f"ONNX Runtime with {self.providers} cannot write its outputs to {device}"
            )
        batch = np.ascontiguousarray(pixel_values, dtype=np.float32)
        if self.per_image:
            parts = [self._bound_run(batch[i : i + 1], device) for i in range(batch.shape[0])]
            return (torch.cat([probs for probs, _ in parts]),
                    torch.cat([embeds for _, embeds in parts]))
        return self._bound_run(batch, device)

    def _bound_run(
        self, batch: np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = torch.from_numpy(batch).to(device)
        index = (device.index or 0) if device.type == "cuda" else 0
        binding = self.session.io_binding()
        binding.bind_input(INPUT_NAME, device.type, index, np.float32, tuple(pixels.shape),
                           pixels.data_ptr())
        outputs = []
        for name, rest in zip(OUTPUT_NAMES, self._output_sizes(batch), strict=True):
            tensor = torch.empty((batch.shape[0], *rest), dtype=torch.float32, device=device)
            if tensor.numel():
                binding.bind_output(name, device.type, index, np.float32, tuple(tensor.shape),
                                    tensor.data_ptr())
            else:  # nothing to write (no findings head: (B, 0)); ONNX Runtime's own buffer
                binding.bind_output(name, device.type, index)
            outputs.append(tensor)
        self.session.run_with_iobinding(binding)
        probabilities, embeddings = outputs
        return probabilities, embeddings

    def _output_sizes(self, batch: np.ndarray) -> list[tuple[int, ...]]:
        """Each output's sizes after the batch axis (fixed by the model; exporters may leave
        them symbolic in the graph, so they are read once from a run on one image)."""
        if self._sizes is None:
            declared = [list(output.shape)[1:] for output in self.session.get_outputs()]
            if all(isinstance(d, int) for dims in declared for d in dims):
                self._sizes = [tuple(int(d) for d in dims) for dims in declared]
            else:
                probe = self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch[:1]})
                self._sizes = [tuple(int(d) for d in out.shape[1:]) for out in probe]
        return self._sizes


__all__ = ["OnnxVisionRunner", "OrtOptions", "choose_providers"]
