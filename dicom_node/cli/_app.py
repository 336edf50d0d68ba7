"""What the command groups of ``dicom_node`` share: the Typer apps, the console, the
``--config`` option, settings loading (with or without the inference stack), errors that exit,
and a stop event for long-running commands."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from dicom_node.errors import NodeError
from dicom_node.ops.logs import configure_logging
from dicom_node.settings import Settings, load_settings

app = typer.Typer(
    name="dicom_node",
    help="PACS-integrated DICOM node that drafts chest X-ray reports.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
model_app = typer.Typer(help="Build, check and describe model bundles.", no_args_is_help=True)
config_app = typer.Typer(help="Validate configuration.", no_args_is_help=True)
app.add_typer(model_app, name="model")
app.add_typer(config_app, name="config")

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML or YAML config file (default: $DICOM_NODE_CONFIG).",
        dir_okay=False,
    ),
]


def _quiet_libraries() -> None:
    """Silence progress bars and exporter chatter that would drown the command's output."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript", "peft"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def _setup(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    _quiet_libraries()


def _fail(message: str, code: int = 2) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _settings(config: Path | None, **overrides: object) -> Settings:
    try:
        settings = load_settings(config, **overrides)
    except NodeError as exc:
        raise _fail(str(exc)) from exc
    _setup(settings)
    return settings


def _node_settings(config: Path | None, **overrides: object) -> Settings:
    """Load settings and configure logging, without importing the inference stack."""
    try:
        settings = load_settings(config, **overrides)
    except NodeError as exc:
        raise _fail(str(exc)) from exc
    configure_logging(settings.log_level, settings.log_format)
    return settings


@contextlib.contextmanager
def stop_on_signal() -> Iterator[threading.Event]:
    """An event that SIGINT or SIGTERM sets while the block runs (for long-running commands).

    The previous signal handlers are restored when the block ends.
    """
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
