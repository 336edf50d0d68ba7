"""Who answers a dialog turn: the model of this process, or a worker through the queue.

:class:`TurnGenerator` is the one call :class:`~dicom_node.api.dialog.turns.DialogTurns`
makes for a turn's text. Two implementations:

* :class:`LocalTurnGenerator`: the registry's active model in this process (the embedded
  default, and any broker other than Redis); the image analyses are kept in the dialog's
  LRU;
* :class:`QueuedTurnGenerator`: a worker consuming the ``dialog`` queue answers, its text
  comes back over Redis pub/sub (:func:`dicom_node.jobqueue.dialog.ask_worker`); ``serve``
  holds no LLM.

Both raise the API's errors: 503 when the model cannot answer now (not ready, not loadable,
failed, no worker), 502 when the answer is unusable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from dicom_node._privacy import describe_exception, uid_digest
from dicom_node.api._analysis import AnalysisCache
from dicom_node.api.errors import ModelOutputError, ModelUnavailableError
from dicom_node.jobqueue.app import dialog_on_workers
from dicom_node.jobqueue.dialog import TurnFailed, TurnRequest, answer_turn, ask_worker
from dicom_node.models.model_cache import get_model
from dicom_node.settings import Settings
from dicom_node.store import Database

if TYPE_CHECKING:
    from inference import ChestXrayVLM

logger = logging.getLogger(__name__)

#: Returns the process's model (loaded on first use).
ModelProvider = Callable[[], "ChestXrayVLM"]


class TurnGenerator(Protocol):
    """Answers a dialog turn: the text pieces, each passed to `on_text` as it appears."""

    def generate(
        self, request: TurnRequest, on_text: Callable[[str], None] | None = None
    ) -> list[str]:
        """The answer's pieces (raises ``ModelUnavailableError`` or ``ModelOutputError``)."""
        ...


def active_model(settings: Settings, db: Database) -> ChestXrayVLM:
    """The registry's active model version, from the process's model cache (the one the
    embedded worker drafts with, so serve holds one copy and follows promotions)."""
    from dicom_node.models.readiness import require_ready
    from dicom_node.models.registry import active_bundle

    require_ready()  # serve's warm-up may still be building or loading it
    return get_model(settings.inference, bundle=active_bundle(db, settings).bundle)


class LocalTurnGenerator:
    """Answers turns with a model of this process.

    Parameters
    ----------
    settings
        The node's settings (the spool folder).
    model_provider
        Returns the model.
    analyses
        The image analyses of recent studies (the vision side runs once per study).
    """

    def __init__(
        self, settings: Settings, model_provider: ModelProvider, analyses: AnalysisCache
    ) -> None:
        self.settings = settings
        self.model_provider = model_provider
        self.analyses = analyses

    def _model(self) -> ChestXrayVLM:
        from dicom_node.models.readiness import ModelNotReadyError
        from inference import BundleError, InferenceError
        from inference.selftest import SelfTestError

        try:
            return self.model_provider()
        except ModelNotReadyError as exc:
            raise ModelUnavailableError(f"{exc}; try again later") from exc
        except SelfTestError as exc:
            raise ModelUnavailableError(
                f"the model failed its self-test ({exc.check}); see the node's log"
            ) from exc
        except (BundleError, InferenceError) as exc:
            logger.error("the model bundle cannot be loaded: %s", exc)
            raise ModelUnavailableError("the model cannot be loaded; see the node's log") from exc

    def generate(
        self, request: TurnRequest, on_text: Callable[[str], None] | None = None
    ) -> list[str]:
        """Answer with this process's model (see :func:`~dicom_node.jobqueue.dialog.answer_turn`).

        Raises
        ------
        ModelUnavailableError
            When the model cannot be loaded, or fails on the study (503).
        """
        model = self._model()
        try:
            return answer_turn(
                model, request, self.settings.storage.spool_dir, on_text, self.analyses
            )
        except Exception as exc:  # noqa: BLE001 - a model failure is a 503 with its type
            logger.error(
                "the model failed on study %s: %s",
                uid_digest(request.study_uid), describe_exception(exc), exc_info=True,
            )
            raise ModelUnavailableError(
                f"the model cannot process the study ({type(exc).__name__}); see the "
                "node's log"
            ) from exc


class QueuedTurnGenerator:
    """Has a worker answer turns through the ``dialog`` queue (a Redis broker).

    Parameters
    ----------
    settings
        ``broker.url`` and ``api.worker_turn_timeout_s``; the Celery app must be configured
        for them (``serve`` does it at start).
    """

    def __init__(self, settings: Settings) -> None:
        if not dialog_on_workers(settings) or settings.broker.url is None:
            raise ValueError("dialog turns go to the workers only with a Redis broker.url")
        self.broker = settings.broker.url
        self.timeout_s = settings.api.worker_turn_timeout_s

    def generate(
        self, request: TurnRequest, on_text: Callable[[str], None] | None = None
    ) -> list[str]:
        """Answer on a worker (see :func:`~dicom_node.jobqueue.dialog.ask_worker`).

        Raises
        ------
        ModelUnavailableError
            When no worker answers in time, the queue cannot be reached, or the worker's
            model cannot answer (503).
        ModelOutputError
            When the worker's answer cannot be read (502).
        """
        try:
            return ask_worker(self.broker, request, self.timeout_s, on_text)
        except TurnFailed as exc:
            logger.warning("dialog turn on study %s not answered by a worker: %s",
                           uid_digest(request.study_uid), exc)
            if exc.unavailable:
                raise ModelUnavailableError(str(exc)) from exc
            raise ModelOutputError(str(exc)) from exc


def turn_generator(
    settings: Settings,
    db: Database,
    analyses: AnalysisCache,
    model_provider: ModelProvider | None = None,
) -> TurnGenerator:
    """The dialog's generator: the workers' with a Redis broker (unless a model provider
    is given), else this process's model."""
    if model_provider is None and dialog_on_workers(settings):
        return QueuedTurnGenerator(settings)
    return LocalTurnGenerator(
        settings, model_provider or (lambda: active_model(settings, db)), analyses
    )


__all__ = [
    "LocalTurnGenerator",
    "ModelProvider",
    "QueuedTurnGenerator",
    "TurnGenerator",
    "active_model",
    "turn_generator",
]
