"""Int8 variant of the exported vision tower for CPU hosts.

Dynamic quantisation (weights int8 ahead of time, activations quantised per batch at run
time) of the MatMul/Gemm nodes, which take about three quarters of the vision tower's time
on CPU. Convolutions, normalisation and softmax stay in float32. The graph is first run
through ONNX Runtime's pre-processing (shape inference and constant folding) as its
quantisation guide recommends. The file is optional: bundles carry it next to
``vision.onnx``, and :class:`~inference.model.RuntimeOptions` chooses which one runs.
"""

from __future__ import annotations

import logging
import tempfile
from os import PathLike
from pathlib import Path

from inference.errors import InferenceError, RuntimeUnavailableError

logger = logging.getLogger(__name__)

#: Node types whose weights are quantised.
QUANTIZED_OP_TYPES: tuple[str, ...] = ("MatMul", "Gemm")


def quantize_vision_onnx(source: str | PathLike[str], destination: str | PathLike[str]) -> Path:
    """Write a dynamically int8-quantised copy of an exported vision tower.

    Parameters
    ----------
    source
        The float32 ``vision.onnx``.
    destination
        Where to write the int8 model (one file).

    Returns
    -------
    pathlib.Path
        ``destination``.

    Raises
    ------
    RuntimeUnavailableError
        When ONNX Runtime (and so its quantisation tools) is not installed.
    InferenceError
        When the model cannot be quantised.
    """
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as exc:
        raise RuntimeUnavailableError(
            "onnxruntime is not installed: install the 'cpu' or 'gpu' extra to quantise"
        ) from exc
    source_path, target = Path(source), Path(destination)
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        try:
            quant_pre_process(str(source_path), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(
                str(prepared),
                str(target),
                op_types_to_quantize=list(QUANTIZED_OP_TYPES),
                weight_type=QuantType.QInt8,
                per_channel=False,
                # 7-bit weights: CPUs without VNNI (AVX2 only) multiply u8 x s8 with 16-bit
                # saturation, which put the tiny test model's probabilities 0.15 off on such a
                # machine; with 7 bits no product saturates, on any x86 CPU.
                reduce_range=True,
                use_external_data_format=False,
            )
        except Exception as exc:  # onnx/onnxruntime raise many unrelated error types here
            target.unlink(missing_ok=True)
            raise InferenceError(f"{source_path}: int8 quantisation failed: {exc}") from exc
    logger.info("wrote int8 vision model %s", target)
    return target


__all__ = ["QUANTIZED_OP_TYPES", "quantize_vision_onnx"]
