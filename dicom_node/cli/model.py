"""Model and local commands: ``model init|verify|info``, ``infer``, ``phantoms`` and
``config check``."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dicom_node.cli._app import (
    ConfigOption,
    _fail,
    _quiet_libraries,
    _settings,
    app,
    config_app,
    console,
    err_console,
    model_app,
)
from dicom_node.errors import NodeError
from dicom_node.settings import load_settings


# --------------------------------------------------------------------------- model init
@model_app.command("init")
def model_init(
    out: Annotated[Path, typer.Option("--out", "-o", help="New bundle directory.")],
    tiny: Annotated[
        bool, typer.Option("--tiny", help="Tiny random-weight bundle (tests, smoke runs).")
    ] = False,
    aligner: Annotated[str, typer.Option(help="qformer, linear or mlp.")] = "qformer",
    backbone: Annotated[
        str, typer.Option(help="Tiny backbone: vit, dinov2, resnet or swin.")
    ] = "vit",
    seed: Annotated[int, typer.Option(help="Seed of the random weights.")] = 0,
    config: ConfigOption = None,
) -> None:
    """Create a model bundle (only --tiny here; trained bundles come from training)."""
    _settings(config)
    if not tiny:
        raise _fail(
            "only --tiny bundles are built by 'model init'; trained bundles come from training"
        )
    if aligner not in ("qformer", "linear", "mlp"):
        raise _fail(f"--aligner must be qformer, linear or mlp, not {aligner!r}")
    from inference import InferenceError, build_tiny_bundle

    try:
        path = build_tiny_bundle(out, aligner=aligner, backbone=backbone, seed=seed)  # type: ignore[arg-type]
    except (InferenceError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    console.print(f"wrote tiny {backbone}/{aligner} bundle to {path}")


# --------------------------------------------------------------------------- model verify
@model_app.command("verify")
def model_verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory.")],
    atol: Annotated[float, typer.Option(help="Largest allowed absolute difference.")] = 1e-4,
    int8_atol: Annotated[
        float,
        typer.Option(help="Largest allowed difference of the int8 model's probabilities."),
    ] = 0.02,
    batch: Annotated[int, typer.Option(min=1, help="Random images to compare.")] = 2,
    config: ConfigOption = None,
) -> None:
    """Check checksums, then compare the torch and ONNX Runtime vision paths.

    The float32 ONNX model must match torch within ``--atol``. When the bundle also has an
    int8 model, its finding probabilities must stay within ``--int8-atol`` of torch (its
    image embeddings drift by quantisation error and are reported, not gated).
    """
    settings = _settings(config)
    from inference import InferenceError, load_manifest, verify_vision_parity

    ort_options = settings.inference.runtime_options().ort
    try:
        result = verify_vision_parity(bundle, batch_size=batch, ort_options=ort_options)
        has_int8 = load_manifest(bundle, verify=False).vision_onnx_int8 is not None
        int8 = (
            verify_vision_parity(
                bundle, batch_size=batch, ort_options=ort_options, precision="int8"
            )
            if has_int8
            else None
        )
    except InferenceError as exc:
        raise _fail(str(exc)) from exc
    console.print(
        f"checksums ok; ONNX Runtime ({', '.join(result.providers)}) vs torch on {batch} random "
        f"images: max |diff| probabilities {result.max_abs_diff_probabilities:.3e}, "
        f"image embeddings {result.max_abs_diff_embeddings:.3e}"
    )
    console.print(f"max abs diff: {result.max_abs_diff:.3e} (tolerance {atol:.0e})")
    if int8 is not None:
        console.print(
            f"int8 model vs torch: max |diff| probabilities "
            f"{int8.max_abs_diff_probabilities:.3e} (tolerance {int8_atol:.0e}), "
            f"image embeddings {int8.max_abs_diff_embeddings:.3e}"
        )
    if result.max_abs_diff > atol:
        raise _fail(f"vision paths differ by {result.max_abs_diff:.3e} > {atol:.0e}", code=1)
    if int8 is not None and int8.max_abs_diff_probabilities > int8_atol:
        raise _fail(
            f"int8 probabilities differ by {int8.max_abs_diff_probabilities:.3e} > "
            f"{int8_atol:.0e}",
            code=1,
        )


# --------------------------------------------------------------------------- model import
@model_app.command("import")
def model_import(
    kind: Annotated[
        str, typer.Argument(help="What the files are: radialog, radialog-llava, xraygpt, "
                            "llava-rad, libra or hf.")
    ],
    source: Annotated[Path, typer.Argument(help="The published model's files, as downloaded.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New bundle directory.")],
    llm: Annotated[
        Path | None,
        typer.Option(help="The base LLM's Hugging Face directory (radialog: Vicuna-7B v1.3; "
                     "xraygpt: Vicuna_Radiology_fp16; llava-rad: Vicuna-7B v1.5); referenced "
                     "by path and checksummed, not copied."),
    ] = None,
    vision_tower: Annotated[
        Path | None,
        typer.Option(help="libra: RAD-DINO's Hugging Face directory (microsoft/rad-dino, its "
                     "mm_vision_tower)."),
    ] = None,
    visual_projector: Annotated[
        Path | None,
        typer.Option(help="radialog: the replayed 1408-wide projector (docs/models.md), "
                     "when checkpoint_4.pth lacks it."),
    ] = None,
    name: Annotated[str | None, typer.Option(help="Bundle name (default: the kind's).")] = None,
    version: Annotated[str, typer.Option(help="Bundle version.")] = "1",
    licence: Annotated[
        str | None, typer.Option(help="The weights' licence, as the model card states it "
                                 "(needed for hf and libra).")
    ] = None,
    intended_use: Annotated[
        str | None, typer.Option(help="The model card's intended-use notice (needed for hf "
                                 "and libra).")
    ] = None,
    instruction: Annotated[
        str | None, typer.Option(help="hf, llava-rad, libra: the request sent with each "
                                 "image.")
    ] = None,
    trust_remote_code: Annotated[
        bool, typer.Option(help="hf: acknowledge a model published with its own code "
                           "(MAIRA-2); the node reproduces it and never runs it.")
    ] = False,
) -> None:
    """Turn a published model's files into a bundle (checked with ``model verify``).

    The bundle is written to a temporary folder next to OUT and renamed at the end: a
    failed import leaves nothing behind. Errors name the file and the key.
    """
    _quiet_libraries()
    from inference import InferenceError, Provenance
    from inference.importers import (
        KINDS,
        import_hf,
        import_libra,
        import_llava_rad,
        import_radialog,
        import_radialog_llava,
        import_xraygpt,
    )
    from inference.importers.maira2 import is_maira2, remote_code_notice

    if kind not in KINDS:
        raise _fail(f"unknown kind {kind!r}; known: {', '.join(sorted(KINDS))}")
    try:
        if kind in ("radialog", "radialog-llava", "xraygpt", "llava-rad") and llm is None:
            raise _fail(f"--llm is needed for {kind}: the base LLM's Hugging Face directory")
        if kind == "radialog":
            assert llm is not None
            path = import_radialog(
                source, out, llm=llm, visual_projector=visual_projector,
                name=name or "radialog-v1", version=version,
            )
        elif kind == "radialog-llava":
            assert llm is not None
            path = import_radialog_llava(source, out, llm=llm, name=name or "radialog-v2",
                                         version=version)
        elif kind == "xraygpt":
            assert llm is not None
            path = import_xraygpt(source, out, llm=llm, name=name or "xraygpt", version=version)
        elif kind == "llava-rad":
            assert llm is not None
            from inference.importers.llava_rad import DEFAULT_INSTRUCTION as RAD_INSTRUCTION

            path = import_llava_rad(source, out, llm=llm, name=name or "llava-rad",
                                    version=version, instruction=instruction or RAD_INSTRUCTION)
        elif not licence or not intended_use:
            raise _fail(f"--licence and --intended-use are needed for {kind}: copy them from "
                        "the model card; they go into every SR the model drafts")
        elif kind == "libra":
            from inference.importers.libra import DEFAULT_INSTRUCTION as LIBRA_INSTRUCTION

            if vision_tower is None:
                raise _fail("--vision-tower is needed for libra: RAD-DINO's Hugging Face "
                            "directory (microsoft/rad-dino)")
            path = import_libra(
                source, out, vision_tower=vision_tower, name=name or "libra", version=version,
                instruction=instruction or LIBRA_INSTRUCTION,
                provenance=Provenance(source=f"{source.name} (Libra checkpoint)",
                                      licence=licence, intended_use=intended_use),
            )
        else:
            path = import_hf(
                source, out, name=name or source.name, version=version,
                instruction=instruction, trust_remote_code=trust_remote_code,
                provenance=Provenance(source=f"{source.name} (transformers checkpoint)",
                                      licence=licence, intended_use=intended_use),
            )
    except InferenceError as exc:
        raise _fail(str(exc)) from exc
    if kind == "hf" and trust_remote_code and is_maira2(source):
        console.print(remote_code_notice(source))
    console.print(f"wrote {kind} bundle to {path}")


# --------------------------------------------------------------------------- model info
@model_app.command("info")
def model_info(bundle: Annotated[Path, typer.Argument(help="Bundle directory.")]) -> None:
    """Print a bundle's name, version, provenance, architecture, adapters and metrics as
    JSON."""
    _quiet_libraries()
    from inference import InferenceError, bundle_summary

    try:
        console.print_json(json.dumps(bundle_summary(bundle)))
    except InferenceError as exc:
        raise _fail(str(exc)) from exc


# --------------------------------------------------------------------------- infer
@app.command("infer")
def infer(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="DICOM files or folders of ONE study (default: the embedded sample CR)."
        ),
    ] = None,
    model: Annotated[Path | None, typer.Option("--model", "-m", help="Bundle directory.")] = None,
    indication: Annotated[
        str | None, typer.Option(help="Clinical indication for the prompt.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    stream: Annotated[bool, typer.Option(help="Print the report as it is generated.")] = True,
    device: Annotated[str | None, typer.Option(help="LLM device (auto, cpu, cuda).")] = None,
    vision_backend: Annotated[str | None, typer.Option(help="onnx or torch.")] = None,
    config: ConfigOption = None,
) -> None:
    """Print finding probabilities and a draft report for the DICOM files of one study."""
    overrides = {"bundle": model, "device": device, "vision_backend": vision_backend}
    settings = _settings(config, inference=overrides)
    from dicom_node.pipeline.local_study import read_study, sample_study
    from inference import ChestXrayVLM, InferenceError

    bundle = settings.inference.bundle
    if not bundle.exists():
        raise _fail(
            f"no model bundle at {bundle}; build the demo model with "
            f"'dicom_node model build-demo --out {bundle}' (or run 'dicom_node serve' once), "
            "make a tiny test bundle with 'dicom_node model init --tiny --out DIR', "
            "or pass --model"
        )
    try:
        datasets = read_study(list(paths) if paths else [sample_study()])
        vlm = ChestXrayVLM.from_bundle(bundle, settings.inference.runtime_options())
        streaming = stream and not as_json and sys.stdout.isatty()
        if streaming:
            console.print("[bold]Report[/] ", end="")
        draft = vlm.generate_report(
            datasets,
            indication,
            on_text=(lambda piece: console.print(piece, end="", highlight=False))
            if streaming
            else None,
        )
        screening = vlm.analyse(datasets).content if vlm.content_check is not None else []
    except (InferenceError, NodeError) as exc:
        raise _fail(str(exc)) from exc
    if streaming:
        console.print()
    if as_json:
        payload = {
            "model": {"name": draft.model_name, "version": draft.model_version},
            "images": len(datasets),
            "indication": draft.indication,
            "findings": [
                {
                    "label": f.label,
                    "probability": round(f.probability, 4),
                    "threshold": f.threshold,
                    "positive": f.positive,
                }
                for f in draft.findings
            ],
            "report": draft.text,
            "content_check": [
                {
                    "chest_probability": round(score.chest_probability, 4),
                    "ood_ratio": round(score.ood_ratio, 3),
                    "passed": score.is_chest and score.in_distribution,
                    "verdict": score.describe(),
                }
                for score in screening
            ],
        }
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    table = Table(
        title=f"Findings ({draft.model_name} {draft.model_version}, {len(datasets)} image(s))"
    )
    for column in ("finding", "probability", "threshold", "positive"):
        table.add_column(column)
    for f in draft.findings:
        table.add_row(
            f.label, f"{f.probability:.3f}", f"{f.threshold:.2f}", "yes" if f.positive else ""
        )
    console.print(table)
    for index, score in enumerate(screening, start=1):
        console.print(f"content check, image {index}: {score.describe()}", highlight=False)
    if any(not (s.is_chest and s.in_distribution) for s in screening):
        console.print(
            "[bold]Caution:[/] the node would not draft this study (inference.screening = "
            "refuse) or would draft it with a caution statement (warn).", highlight=False,
        )
    if not streaming:
        console.print("[bold]Report[/]")
        console.print(draft.text or "(empty)", highlight=False)


# --------------------------------------------------------------------------- phantoms
@app.command("phantoms")
def phantoms(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    n: Annotated[int, typer.Option("--n", help="Number of images.")] = 100,
    seed: Annotated[int, typer.Option(help="Dataset seed (same seed, same files).")] = 0,
    image_format: Annotated[
        str, typer.Option("--format", help="png (8-bit) or dicom (CR/DX, 12-16 bits).")
    ] = "png",
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 512,
    workers: Annotated[
        int | None, typer.Option(help="Worker processes (default: all CPU cores).")
    ] = None,
    masks: Annotated[bool, typer.Option("--masks", help="Also write masks (.npz).")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing phantoms.csv.")
    ] = False,
) -> None:
    """Draw synthetic chest radiographs with labels and reports (phantoms.csv)."""
    logging.basicConfig(level=logging.WARNING)
    if n <= 0:
        raise _fail(f"--n must be a positive number of images, got {n}")
    if seed < 0:
        raise _fail(f"--seed must be >= 0, got {seed}")
    if image_format not in ("png", "dicom"):
        raise _fail(f"--format must be png or dicom, not {image_format!r}")
    if workers is not None and workers < 1:
        raise _fail(f"--workers must be >= 1, got {workers}")
    from rich.progress import Progress

    from training.phantoms import PhantomConfig, write_phantoms

    try:
        config = PhantomConfig(size=size)
        with Progress(console=err_console, transient=True,
                      disable=not err_console.is_terminal) as progress:
            task = progress.add_task("drawing phantoms", total=n)
            result = write_phantoms(
                out, n, seed, fmt=image_format, config=config,
                workers=workers or min(n, os.cpu_count() or 1), masks=masks,
                overwrite=overwrite,
                progress=lambda done: progress.update(task, completed=done),
            )
    except (ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    console.print(
        f"wrote {result.images} {image_format} phantoms of {result.subjects} subjects and "
        f"{result.csv_path} in {result.seconds:.1f} s"
    )


# --------------------------------------------------------------------------- config check
@config_app.command("check")
def config_check(
    file: Annotated[
        Path | None, typer.Argument(help="TOML or YAML file (default: $DICOM_NODE_CONFIG).")
    ] = None,
) -> None:
    """Validate a configuration (file + environment) and print the effective settings."""
    try:
        settings = load_settings(file)
    except NodeError as exc:
        raise _fail(str(exc)) from exc
    console.print_json(settings.model_dump_json())
