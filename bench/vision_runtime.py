"""Benchmark: the vision side on ONNX Runtime vs torch eager, same inputs, one run.

Builds a vision tower of the demo architecture (ViT-S/16 at 224 px with a 6-layer Q-Former of
32 queries projecting to SmolLM2's 576-wide embeddings; random weights, which do not change
the speed), exports it to ONNX, checks that both paths agree, then times both at batch 1 and
8 with the same thread count and prints the median latencies and the speed-up ratio. On CPU
it also times the int8 model that bundles ship (``vision.int8.onnx``: dynamic quantisation of
the MatMuls, run one image at a time as the product runs it, so that an image's result never
depends on the other images of its batch).

Usage::

    python bench/vision_runtime.py [--threads N] [--repeats R] [--aligner qformer|linear|mlp]
        [--device cpu|cuda] [--exporter dynamo|torchscript|both] [--no-int8] [--json FILE]

Goal on CPU: ONNX Runtime at least 1.3x faster than torch eager.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from inference import ModelConfig, OnnxVisionRunner, OrtOptions, VisionTower, export_vision_onnx
from inference.config import AlignerConfig, PreprocessConfig, VisionConfig
from inference.quantize import quantize_vision_onnx

VIT_SMALL = dict(
    model_type="vit",
    image_size=224,
    patch_size=16,
    hidden_size=384,
    num_hidden_layers=12,
    num_attention_heads=6,
    intermediate_size=1536,
    num_channels=3,
)
QFORMER_SMALL = dict(
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=6,
    intermediate_size=1536,
    cross_attention_frequency=2,
)


def demo_like_config(aligner: str) -> ModelConfig:
    """The benchmark architecture (see module docstring)."""
    return ModelConfig(
        preprocess=PreprocessConfig(image_size=224),
        vision=VisionConfig(dict(VIT_SMALL)),
        aligner=AlignerConfig(kind=aligner, num_query_tokens=32, qformer=dict(QFORMER_SMALL)),  # type: ignore[arg-type]
        llm_hidden_size=576,
    )


def ort_version() -> str:
    """Installed ONNX Runtime version."""
    import onnxruntime

    return str(onnxruntime.__version__)


def median_seconds(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    """Median wall time of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="threads for both runtimes"
    )
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per case (median)")
    parser.add_argument("--aligner", choices=("qformer", "linear", "mlp"), default="qformer")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument(
        "--exporter",
        choices=("dynamo", "torchscript", "both"),
        default="both",
        help="which ONNX exporter(s) to time",
    )
    parser.add_argument(
        "--no-int8", dest="int8", action="store_false", help="skip the int8 model (CPU only)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    warnings.filterwarnings("ignore")
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    config = demo_like_config(args.aligner)
    tower = VisionTower(config).eval()

    exporters = ["dynamo", "torchscript"] if args.exporter == "both" else [args.exporter]
    providers = ("CUDAExecutionProvider",) if args.device == "cuda" else ("CPUExecutionProvider",)
    options = OrtOptions(providers=providers, intra_op_threads=args.threads, inter_op_threads=1)
    runners: dict[str, OnnxVisionRunner] = {}
    export_s: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for exporter in exporters:
            path = Path(tmp) / f"vision-{exporter}.onnx"
            start = time.perf_counter()
            export_vision_onnx(tower, path, 224, 3, exporter=exporter)  # type: ignore[arg-type]
            export_s[exporter] = time.perf_counter() - start
            runners[exporter] = OnnxVisionRunner(path, options)
        if args.int8 and args.device == "cpu":
            source = exporters[-1]
            int8_path = quantize_vision_onnx(
                Path(tmp) / f"vision-{source}.onnx", Path(tmp) / "vision-int8.onnx"
            )
            runners[f"{source}-int8"] = OnnxVisionRunner(int8_path, options, per_image=True)
    device = torch.device(args.device)
    tower = tower.to(device)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        pixels = (
            np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        )
        tensor = torch.from_numpy(pixels).to(device)

        def run_torch(tensor: torch.Tensor = tensor) -> object:
            with torch.inference_mode():
                out = tower(tensor)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return out

        with torch.inference_mode():
            reference = [t.float().cpu().numpy() for t in tower(tensor)]
        row: dict[str, float] = {
            "batch": batch,
            "torch_ms": median_seconds(run_torch, args.repeats) * 1e3,
        }
        for exporter, runner in runners.items():
            outputs = runner(pixels)
            row[f"{exporter}_diff"] = max(
                float(np.abs(o - r).max()) for o, r in zip(outputs, reference, strict=True)
            )
            row[f"{exporter}_ms"] = (
                median_seconds(lambda r=runner, p=pixels: r(p), args.repeats) * 1e3
            )
            row[f"{exporter}_ratio"] = row["torch_ms"] / row[f"{exporter}_ms"]
        rows.append(row)

    params = sum(p.numel() for p in tower.parameters()) / 1e6
    header = (
        f"vision tower: ViT-S/16 224px + {args.aligner} -> 576 ({params:.1f} M params); device "
        f"{args.device}; {args.threads} threads for both runtimes; median of {args.repeats}; "
        f"torch {torch.__version__}; onnxruntime {ort_version()}; "
        + ", ".join(f"{e} export {s:.1f} s" for e, s in export_s.items())
    )
    print(header)
    columns = "".join(
        f" {'ORT ' + e + ' ms':>20} {'speed-up':>9} {'max|diff|':>9}" for e in runners
    )
    print(f"{'batch':>5} {'torch eager ms':>15}" + columns)
    for row in rows:
        cells = "".join(
            f" {row[e + '_ms']:>20.1f} {row[e + '_ratio']:>8.2f}x {row[e + '_diff']:>9.1e}"
            for e in runners
        )
        print(f"{row['batch']:>5} {row['torch_ms']:>15.1f}" + cells)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
