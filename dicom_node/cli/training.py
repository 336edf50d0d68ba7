"""Training commands of the ``dicom_node`` CLI: ``train``, ``evaluate``, ``model build-demo``.

Registered on the main app by :mod:`dicom_node.cli`; kept apart so the node's own commands stay
small and the training stack is imported only when one of these runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, cast

import typer

from dicom_node.cli._app import ConfigOption, _fail, _settings, app, console, model_app


@app.command("train")
def train_command(
    run_config: Annotated[
        Path, typer.Option("--run", "-r", help="Training run file (TOML or JSON).", dir_okay=False)
    ],
    bundle: Annotated[
        Path | None, typer.Option(help="Write the trained model as a bundle here.")
    ] = None,
    output_dir: Annotated[Path | None, typer.Option(help="Override the run's output_dir.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the run's checkpoints.")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the staged fine-tunes of a training run file, then optionally package a bundle."""
    _settings(config)
    from training import TrainingError
    from training.config import load_training_config
    from training.recipes.pipeline import train

    overrides = {"output_dir": str(output_dir)} if output_dir else None
    try:
        run = load_training_config(run_config, overrides)
        _, metrics, written = train(run, bundle, resume=resume)
    except (TrainingError, OSError) as exc:
        raise _fail(str(exc)) from exc
    console.print_json(json.dumps(metrics))
    if written is not None:
        console.print(f"wrote bundle {written}")


@app.command("evaluate")
def evaluate_command(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model bundle directory.")],
    data: Annotated[Path, typer.Option("--data", "-d", help="Dataset folder or CSV.")],
    kind: Annotated[
        str, typer.Option(help="Dataset layout: phantoms, mimic or dicom.")
    ] = "phantoms",
    reports: Annotated[
        Path | None, typer.Option(help="MIMIC reports root, or the DICOM reports CSV.")
    ] = None,
    split: Annotated[
        str, typer.Option(help="Studies to evaluate: all, or the test split by patient.")
    ] = "all",
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate at most N studies.")] = None,
    corrections: Annotated[
        int, typer.Option(min=0, help="Correction examples for correction success.")
    ] = 50,
    bertscore_model: Annotated[
        Path | None, typer.Option(help="Local BERT directory for BERTScore (skipped if unset).")
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            help="Studies drafted per batch; 1 drafts each study alone, as the node does "
            "(with lookup decoding when the bundle has an n-gram table).",
        ),
    ] = 48,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """Generate reports for a dataset and print CE, NLG and correction metrics."""
    settings = _settings(config)
    from training import TrainingError
    from training.evaluate import evaluate_bundle, load_eval_records

    if kind not in ("phantoms", "mimic", "dicom"):
        raise _fail(f"--kind must be phantoms, mimic or dicom, not {kind!r}")
    if split not in ("all", "test"):
        raise _fail(f"--split must be all or test, not {split!r}")
    try:
        records = load_eval_records(
            data,
            cast(Literal["phantoms", "mimic", "dicom"], kind),
            reports,
            split=cast(Literal["all", "test"], split),
            limit=limit,
        )
        result = evaluate_bundle(
            model,
            records,
            options=settings.inference.runtime_options(),
            batch_size=batch_size,
            corrections=corrections,
            bertscore_model=bertscore_model,
            progress=not as_json,
        )
    except (TrainingError, OSError, ValueError) as exc:
        raise _fail(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from training.evaluate import render_table

    console.print(render_table(result))


@model_app.command("build-demo")
def build_demo_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Bundle directory to create.")],
    work_dir: Annotated[
        Path | None, typer.Option(help="Phantoms, base models and checkpoints (default: OUT.work).")
    ] = None,
    n: Annotated[int, typer.Option(min=50, help="Phantom studies to generate.")] = 2400,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted build.")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    config: ConfigOption = None,
) -> None:
    """Build the demo model: SmolLM2-135M + MiniLM, trained on phantoms, evaluated.

    Writes OUT.work/progress.json at each step (read by 'dicom_node serve' and 'status').
    """
    _settings(config)
    from training import TrainingError
    from training.recipes.demo import build_demo

    precision: Literal["auto"] = "auto"
    try:
        result = build_demo(
            out, work_dir=work_dir, n_studies=n, resume=resume, device=device,
            precision=precision, progress=progress,
        )
    except (TrainingError, OSError) as exc:
        raise _fail(str(exc)) from exc
    console.print_json(json.dumps(result["summary"]))
    console.print(f"wrote demo bundle {out}")


__all__ = ["build_demo_command", "evaluate_command", "train_command"]
