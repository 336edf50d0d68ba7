"""Parity check between the torch and ONNX Runtime vision paths of a bundle."""

from __future__ import annotations

from dataclasses import dataclass
from os import PathLike
from typing import Literal

import numpy as np

from inference.bundle import load_manifest
from inference.errors import BundleError
from inference.model import TorchVisionRunner
from inference.onnx_runtime import OnnxVisionRunner, OrtOptions
from inference.packaging import load_vision_tower


@dataclass
class VerificationResult:
    """Largest absolute differences between the two runtimes on the same inputs."""

    max_abs_diff_probabilities: float
    max_abs_diff_embeddings: float
    batch_size: int
    providers: list[str]
    precision: Literal["fp32", "int8"] = "fp32"

    @property
    def max_abs_diff(self) -> float:
        """Largest difference over both outputs."""
        return max(self.max_abs_diff_probabilities, self.max_abs_diff_embeddings)


def verify_vision_parity(
    bundle: str | PathLike[str],
    *,
    batch_size: int = 2,
    seed: int = 0,
    ort_options: OrtOptions | None = None,
    precision: Literal["fp32", "int8"] = "fp32",
) -> VerificationResult:
    """Run the same random inputs through torch and ONNX Runtime and compare the outputs.

    Parameters
    ----------
    bundle
        Bundle directory (its checksums are verified first).
    batch_size
        Number of random images.
    seed
        Seed of the random inputs.
    ort_options
        ONNX Runtime options (providers, threads).
    precision
        Which ONNX file to compare: ``vision.onnx`` (``fp32``, should match torch to float
        rounding) or ``vision.int8.onnx`` (``int8``, drifts by quantisation error).

    Raises
    ------
    BundleError
        When ``precision`` is ``int8`` and the bundle has no int8 model.
    """
    manifest = load_manifest(bundle, verify=True)
    pre = manifest.config.preprocess
    rng = np.random.default_rng(seed)
    pixels = rng.standard_normal((batch_size, pre.channels, pre.image_size, pre.image_size))
    pixels = pixels.astype(np.float32)
    torch_runner = TorchVisionRunner(
        load_vision_tower(manifest.config, manifest.vision_weights), "cpu"
    )
    onnx_file = manifest.vision_onnx if precision == "fp32" else manifest.vision_onnx_int8
    if onnx_file is None:
        raise BundleError(f"{manifest.root}: the bundle has no int8 vision model")
    onnx_runner = OnnxVisionRunner(onnx_file, ort_options, per_image=precision == "int8")
    torch_probs, torch_embeds = torch_runner(pixels)
    onnx_probs, onnx_embeds = onnx_runner(pixels)
    return VerificationResult(
        max_abs_diff_probabilities=float(np.abs(torch_probs - onnx_probs).max(initial=0.0)),
        max_abs_diff_embeddings=float(np.abs(torch_embeds - onnx_embeds).max()),
        batch_size=batch_size,
        providers=list(onnx_runner.providers),
        precision=precision,
    )


__all__ = ["VerificationResult", "verify_vision_parity"]
