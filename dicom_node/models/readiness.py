"""Is this process's model ready to draft? Building, loading, self-testing, ready or failed.

``dicom_node serve`` on its embedded default starts the SCP, the queue and ``/healthz`` at once
and makes the model ready in the background (:class:`ModelWarmup`): on a first run it builds
the demo model in a child process (``dicom_node model build-demo --resume``, progress read
from the build's ``progress.json``), then loads the bundle and self-tests it
(:func:`dicom_node.models.model_cache.get_model`). Meanwhile studies are received and queued; the
dispatcher hands draft jobs to the worker only once the model is ready
(:attr:`ModelReadiness.ready`), and a job that reaches a worker of this process earlier waits
(:func:`require_ready` raises a transient error, the job stays ``queued``).

The process's :data:`READINESS` starts *unmanaged*: a process without a warm-up (``dicom_node
worker``, ``dicom_node api``, tests) loads its model on first use, as before.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node._privacy import describe_exception
from dicom_node.errors import NodeError, TransientJobError
from dicom_node.settings import DEFAULT_BUNDLE, Settings

if TYPE_CHECKING:
    from inference import ChestXrayVLM

logger = logging.getLogger(__name__)

#: The file a demo build writes its progress to, in its work folder.
PROGRESS_FILE = "progress.json"
#: Seconds between two reads of a running build's progress.
POLL_S = 1.0


class ModelPhase(StrEnum):
    """Where the process's model is on its way to drafting."""

    UNMANAGED = "unmanaged"  # no warm-up: loaded on first use
    BUILDING = "building"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelNotReadyError(TransientJobError):
    """The model is still being built or loaded, or it failed; the job waits."""


@dataclass(frozen=True)
class ModelStatus:
    """A snapshot of :class:`ModelReadiness`."""

    phase: ModelPhase
    #: What is happening (build step, elapsed time) or, when failed, why.
    detail: str
    #: The failed check (``build``, ``load``, ``vision``, ``adapter:report``, ...).
    check: str | None
    since: datetime

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (``status --json``, ``/healthz``)."""
        return {
            "phase": self.phase.value,
            "detail": self.detail,
            "check": self.check,
            "since": self.since.isoformat(timespec="seconds"),
        }


class ModelReadiness:
    """The thread-safe state of the process's model (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status = ModelStatus(ModelPhase.UNMANAGED, "loaded on first use", None,
                                   datetime.now(UTC))

    def set(self, phase: ModelPhase, detail: str, check: str | None = None) -> None:
        """Record a new phase (or new progress in the same phase)."""
        with self._lock:
            since = self._status.since if phase is self._status.phase else datetime.now(UTC)
            self._status = ModelStatus(phase, detail, check, since)

    def status(self) -> ModelStatus:
        """The current state."""
        with self._lock:
            return self._status

    @property
    def ready(self) -> bool:
        """Whether jobs may be handed to the model (ready, or no warm-up in charge)."""
        return self.status().phase in (ModelPhase.READY, ModelPhase.UNMANAGED)

    def reset(self) -> None:
        """Back to unmanaged (a stopped service)."""
        self.set(ModelPhase.UNMANAGED, "loaded on first use")


#: The process's model state.
READINESS = ModelReadiness()


def require_ready() -> None:
    """Raise :class:`ModelNotReadyError` unless the process's model may draft now."""
    status = READINESS.status()
    if status.phase in (ModelPhase.READY, ModelPhase.UNMANAGED):
        return
    raise ModelNotReadyError(f"the model is not ready ({status.phase.value}: {status.detail})")


def health_problem(status: ModelStatus) -> str | None:
    """The ``/healthz`` problem of a model state: only a failure is one."""
    if status.phase is ModelPhase.FAILED:
        return f"{status.check or 'model'} failed: {status.detail}"
    return None


# --------------------------------------------------------------------------- build progress
def read_progress(work_dir: Path) -> dict[str, object] | None:
    """The progress a demo build last wrote, or None (no build, unreadable file)."""
    try:
        data = json.loads((work_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def describe_progress(progress: dict[str, object] | None, started: float | None = None) -> str:
    """``"step 3 of 8: training the classifier, 4 min elapsed"`` (or a plain phrase)."""
    if not progress:
        return "starting the demo model build"
    text = f"step {progress.get('step')} of {progress.get('steps')}: {progress.get('name')}"
    began = progress.get("build_started")
    if isinstance(began, int | float):
        text += f", {(time.time() - began) / 60:.0f} min elapsed"
    elif started is not None:
        text += f", {(time.monotonic() - started) / 60:.0f} min elapsed"
    return text


def demo_work_dir(bundle: Path) -> Path:
    """The work folder of a demo build into ``bundle`` (``<bundle>.work``)."""
    return bundle.with_name(bundle.name + ".work")


def demo_build_command(bundle: Path) -> list[str]:
    """``python -m dicom_node model build-demo --out BUNDLE --resume --no-progress``."""
    return [sys.executable, "-m", "dicom_node", "model", "build-demo", "--out", str(bundle),
            "--resume", "--no-progress"]


def needs_demo_build(settings: Settings) -> bool:
    """Whether the configured bundle is the default demo model and not built yet."""
    bundle = settings.inference.bundle
    return bundle == DEFAULT_BUNDLE and not (bundle / "manifest.json").exists()


# --------------------------------------------------------------------------- warm-up
class ModelWarmup:
    """Makes the process's model ready in a background thread (see the module docstring).

    Parameters
    ----------
    settings
        The node's settings (``inference``).
    load
        Loads and self-tests the model (the jobs' :func:`~dicom_node.jobqueue.context.model`);
        ``None``: this process only builds the demo bundle when it is missing, for the
        workers to load (``serve`` with its dialog on the workers).
    readiness
        The state to update (default: the process's :data:`READINESS`).
    build_command
        The command that builds the demo bundle (default :func:`demo_build_command`); it
        must write the bundle and may write ``progress.json`` in the work folder.
    """

    def __init__(
        self,
        settings: Settings,
        load: Callable[[], ChestXrayVLM] | None,
        readiness: ModelReadiness | None = None,
        build_command: Sequence[str] | None = None,
    ) -> None:
        self.settings = settings
        self._load = load
        self.readiness = readiness or READINESS
        self.build_command = list(
            build_command or demo_build_command(settings.inference.bundle)
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._build: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the warm-up thread (the phase is set before this returns)."""
        if needs_demo_build(self.settings):
            self.readiness.set(ModelPhase.BUILDING, describe_progress(
                read_progress(demo_work_dir(self.settings.inference.bundle))))
        else:
            self.readiness.set(ModelPhase.LOADING, "loading and self-testing the model")
        self._thread = threading.Thread(target=self._run, name="dicom-node-model", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if needs_demo_build(self.settings) and not self._build_demo():
                return
            if self._stop.is_set():
                return
            if self._load is None:
                self.readiness.set(ModelPhase.READY, "the bundle is there; the workers load it")
                return
            self.readiness.set(ModelPhase.LOADING, "loading and self-testing the model")
            self._load_model()
        except Exception as exc:  # noqa: BLE001 - reported by /healthz, never a crash
            reason = describe_exception(exc)
            logger.error("the model cannot be made ready: %s", reason)
            self.readiness.set(ModelPhase.FAILED, reason, "model")

    def _build_demo(self) -> bool:
        bundle = self.settings.inference.bundle
        work = demo_work_dir(bundle)
        work.mkdir(parents=True, exist_ok=True)
        log_path = work / "build.log"
        started = time.monotonic()
        logger.warning(
            "first run: building the demo model into %s in the background (log: %s); "
            "studies are received and queued meanwhile", bundle, log_path,
        )
        with log_path.open("ab") as log:
            self._build = subprocess.Popen(  # noqa: S603 - our own command line
                self.build_command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        while self._build.poll() is None:
            self.readiness.set(ModelPhase.BUILDING, describe_progress(read_progress(work), started))
            if self._stop.wait(POLL_S):
                return False
        code = self._build.returncode
        self._build = None
        if code != 0 or not (bundle / "manifest.json").exists():
            reason = f"the demo model build exited with status {code}; see {log_path}"
            logger.error("%s", reason)
            self.readiness.set(ModelPhase.FAILED, reason, "build")
            return False
        logger.warning("demo model built in %.1f min", (time.monotonic() - started) / 60)
        return True

    def _load_model(self) -> None:
        from inference import InferenceError
        from inference.selftest import SelfTestError

        started = time.perf_counter()
        assert self._load is not None
        try:
            model = self._load()
        except SelfTestError as exc:
            logger.error("model self-test failed: %s: %s", exc.check, describe_exception(exc))
            self.readiness.set(ModelPhase.FAILED, describe_exception(exc.__cause__ or exc),
                               exc.check)
            return
        except (InferenceError, NodeError) as exc:
            logger.error("the model cannot be loaded: %s", describe_exception(exc))
            self.readiness.set(ModelPhase.FAILED, describe_exception(exc), "load")
            return
        self.readiness.set(
            ModelPhase.READY,
            f"{model.name} {model.version}, loaded and self-tested in "
            f"{time.perf_counter() - started:.1f} s",
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop waiting; a running build is terminated (it resumes on the next start)."""
        self._stop.set()
        build = self._build
        if build is not None and build.poll() is None:
            build.terminate()
            try:
                build.wait(timeout)
            except subprocess.TimeoutExpired:
                build.kill()
        if self._thread is not None:
            self._thread.join(timeout)
        self.readiness.reset()


__all__ = [
    "POLL_S",
    "PROGRESS_FILE",
    "READINESS",
    "ModelNotReadyError",
    "ModelPhase",
    "ModelReadiness",
    "ModelStatus",
    "ModelWarmup",
    "demo_build_command",
    "demo_work_dir",
    "describe_progress",
    "health_problem",
    "needs_demo_build",
    "read_progress",
    "require_ready",
]
