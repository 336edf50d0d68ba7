"""GPU check of issue 20: a RaDialog-shaped bundle at full size, random weights, one study.

Writes RaDialog v1's published files at their real sizes with random weights (Vicuna-7B v1.3's
config in float16, BioViL-T ResNet-50 with the 1408-wide projector, the BERT-base Q-Former with
32 queries, the classifier, an r=8 LoRA; ``tests/support/published/radialog.py``), imports
them with ``dicom_node model import radialog``'s function, then runs the drafting path's
model steps on the sample chest CR: ``ChestXrayVLM.from_bundle`` (timed: load), ``analyse``
and ``generate_reports`` (the draft, as ``draft_job`` calls them), ``draft_to_report`` (the
SR's content), and a generation forced to exactly ``--tokens`` new tokens (random weights may
stop early; EOS is ignored there). Prints and writes under ``--out``:

* ``load_s``: bundle load, checksums included, to a model ready on the device;
* ``peak_gpu_bytes``: ``torch.cuda.max_memory_allocated`` over load and drafting (the LLM;
  the vision side runs on ONNX Runtime and is not in it);
* ``seconds_per_report``: wall time of the forced ``--tokens`` generation, prompt included,
  and ``tokens_per_s``.

Usage (the lent GPU; ``--size tiny --device cpu`` is a smoke run here)::

    python bench/gpu_radialog.py --work /tmp/radialog-full --out $OUT [--tokens 300]
        [--size full|tiny] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dicom_node.pipeline.drafting import draft_to_report
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, GenerationConfig, RuntimeOptions, StudyRequest
from inference.importers import import_radialog

ROOT = Path(__file__).resolve().parents[1]
# The tiny-checkpoint writers, once the packages are imported (tests/ has folders named
# like them).
sys.path.append(str(ROOT / "tests"))
from support.published.radialog import (  # noqa: E402
    FULL_SIZES,
    PROJECTOR_FILE,
    VICUNA_DIR,
    TinySizes,
    write_radialog_v1,
)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="Folder for files and bundle.")
    parser.add_argument("--out", type=Path, required=True, help="Folder for figures.json.")
    parser.add_argument("--size", choices=("full", "tiny"), default="full")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokens", type=int, default=300)
    args = parser.parse_args()
    sizes = FULL_SIZES if args.size == "full" else TinySizes()
    figures: dict[str, object] = {"size": args.size, "device": args.device,
                                  "tokens": args.tokens, "torch": torch.__version__}
    if args.device.startswith("cuda"):
        figures["gpu"] = torch.cuda.get_device_name(0)

    source, bundle = args.work / "RaDialog", args.work / "bundle"
    started = time.perf_counter()
    if not source.exists():
        write_radialog_v1(source, sizes=sizes)
    figures["write_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    if not bundle.exists():
        import_radialog(source, bundle, llm=source / VICUNA_DIR,
                        visual_projector=source / PROJECTOR_FILE)
    figures["import_s"] = round(time.perf_counter() - started, 1)

    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    model = ChestXrayVLM.from_bundle(bundle, RuntimeOptions(device=args.device, dtype="auto",
                                                            vision_precision="fp32"))
    _synchronize(args.device)
    figures["load_s"] = round(time.perf_counter() - started, 2)
    figures["llm_dtype"] = str(model.llm.dtype)
    figures["merged_adapters"] = model.llm.merged_adapters

    datasets = read_study([sample_study()])
    started = time.perf_counter()
    analysis = model.analyse(datasets)
    _synchronize(args.device)
    figures["vision_s"] = round(time.perf_counter() - started, 3)
    started = time.perf_counter()
    (draft,) = model.generate_reports([StudyRequest(analysis)])
    _synchronize(args.device)
    figures["draft_s"] = round(time.perf_counter() - started, 2)
    report, _ = draft_to_report(draft)
    figures["draft_findings_coded"] = len(report.findings)

    # Exactly --tokens new tokens: the same prompt and model, EOS ignored.
    batch = model._batch([model._report_prompt(analysis, None)], [analysis])  # noqa: SLF001
    options = GenerationConfig(max_new_tokens=args.tokens)
    with model.llm.adapter(model.tasks.get("report")) as llm, torch.inference_mode():
        _synchronize(args.device)
        started = time.perf_counter()
        output = llm.generate(
            inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
            max_new_tokens=options.max_new_tokens, min_new_tokens=options.max_new_tokens,
            do_sample=False, use_cache=True, pad_token_id=model.llm.pad_token_id(),
        )
        _synchronize(args.device)
        seconds = time.perf_counter() - started
    figures["generated_tokens"] = int(output.shape[1])
    figures["seconds_per_report"] = round(seconds, 2)
    figures["tokens_per_s"] = round(output.shape[1] / seconds, 1)
    if args.device.startswith("cuda"):
        figures["peak_gpu_bytes"] = int(torch.cuda.max_memory_allocated())
        figures["peak_gpu_gib"] = round(figures["peak_gpu_bytes"] / 2**30, 2)  # type: ignore[operator]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
