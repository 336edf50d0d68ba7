"""Dialog turns on the model: what a turn asks, how a model answers it, and the queue path.

A reader's dialog turn (:mod:`dicom_node.api.dialog.turns`) checks the message, builds a
:class:`TurnRequest` (the report in context, the history, the message, the images), has it
answered, and stores the exchange. The answer comes from :func:`answer_turn` on a model:

* in ``serve``'s own process (the embedded default, or any broker other than Redis); or
* on a worker (a Redis broker): :func:`ask_worker` subscribes to a Redis pub/sub channel
  of its own, sends ``dicom_node.dialog_turn(request, channel)`` to the ``dialog`` queue,
  and relays what the worker publishes there (:class:`TurnChannel`): ``start`` when a
  worker took the turn, ``token`` pieces as they are generated, then ``done`` (the answer's
  pieces) or ``error``. ``serve`` then loads no LLM.

The turn's rows are written by ``serve`` after the answer is complete, so a worker that
dies mid-turn leaves nothing half-stored: ``serve`` waits ``api.worker_turn_timeout_s`` for
the next event, then fails the turn (503) and the reader asks again. Turn messages are
acknowledged when a worker takes them and expire after that timeout: a lost turn is never
answered late, to nobody.

The request carries the report text and the reader's message through the broker (as the
worker's spool carries the images): keep Redis on a private network or loopback.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Protocol

from dicom_node._privacy import describe_exception
from dicom_node.errors import ServiceError
from dicom_node.jobqueue.app import APP_NAME, DIALOG_QUEUE, app

if TYPE_CHECKING:
    from inference import ChestXrayVLM, StudyAnalysis

logger = logging.getLogger(__name__)

#: Name of the dialog task.
DIALOG_TASK = f"{APP_NAME}.dialog_turn"
#: Prefix of the pub/sub channels of turns (one channel per turn).
CHANNEL_PREFIX = f"{APP_NAME}:turn:"
#: What the dialog says between a correction's answer and its redraft.
REDRAFT_NOTE = "\n\n[redrafting from the corrected findings]\n\n"


class TurnFailed(ServiceError):
    """A dialog turn got no answer: the model is unavailable, failed, or no worker answered.

    ``unavailable`` tells a model that cannot be used now (try later) from a failure of
    this turn.
    """

    def __init__(self, message: str, *, unavailable: bool = True) -> None:
        super().__init__(message)
        self.unavailable = unavailable


@dataclass(frozen=True)
class TurnRequest:
    """What the model needs to answer one dialog turn (no database row: it may travel)."""

    #: The study (keys the analysis cache; never logged).
    study_uid: str
    #: The frontal images the model sees, relative to the spool folder.
    images: tuple[str, ...]
    #: The current report as the model gets it.
    context: str
    #: Earlier exchanges: (role, text) pairs, ``user`` / ``assistant``.
    history: tuple[tuple[str, str], ...]
    #: The reader's message.
    instruction: str
    indication: str | None = None
    #: Positive findings the prompt lists instead of the classifier's (None: the
    #: classifier's).
    findings: tuple[str, ...] | None = None
    #: A correction: the answer is checked against the stated findings and may be redrafted.
    correction: bool = False

    def to_message(self) -> dict[str, Any]:
        """The request as the task's JSON argument."""
        return {
            "study_uid": self.study_uid,
            "images": list(self.images),
            "context": self.context,
            "history": [list(pair) for pair in self.history],
            "instruction": self.instruction,
            "indication": self.indication,
            "findings": None if self.findings is None else list(self.findings),
            "correction": self.correction,
        }

    @classmethod
    def from_message(cls, data: Any) -> TurnRequest:
        """The request of a task's argument.

        Raises
        ------
        ValueError
            For a malformed message, or an image path that leaves the spool folder.
        """
        if not isinstance(data, dict):
            raise ValueError("a dialog turn message must be an object")
        try:
            images = tuple(str(p) for p in data["images"])
            history = tuple((str(role), str(text)) for role, text in data["history"])
            findings = data.get("findings")
            request = cls(
                study_uid=str(data["study_uid"]),
                images=images,
                context=str(data["context"]),
                history=history,
                instruction=str(data["instruction"]),
                indication=None if data.get("indication") is None else str(data["indication"]),
                findings=None if findings is None else tuple(str(f) for f in findings),
                correction=bool(data.get("correction", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed dialog turn message ({type(exc).__name__})") from exc
        for image in images:
            path = PurePosixPath(image)
            if path.is_absolute() or ".." in path.parts or not path.parts:
                raise ValueError("a dialog turn's image path must lie inside the spool folder")
        return request


class AnalysisStore(Protocol):
    """Keeps image analyses of recent studies (``serve``'s LRU, or :class:`RecentAnalyses`)."""

    def get(self, key: Hashable, compute: Callable[[], StudyAnalysis]) -> StudyAnalysis: ...


class RecentAnalyses:
    """A small thread-safe LRU of image analyses (a worker's, per process)."""

    def __init__(self, size: int = 32) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._size = size
        self._items: OrderedDict[Hashable, StudyAnalysis] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], StudyAnalysis]) -> StudyAnalysis:
        """The analysis kept for `key`, or `compute()`'s, then kept."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


def answer_turn(
    model: ChestXrayVLM,
    request: TurnRequest,
    spool_dir: Path,
    on_text: Callable[[str], None] | None = None,
    analyses: AnalysisStore | None = None,
) -> list[str]:
    """Answer one dialog turn with `model`: its text pieces, streamed to `on_text`.

    The images are analysed once per study and image set (kept in `analyses`). A
    correction whose answer leaves a finding the reader stated unmet is redrafted from the
    corrected findings with the report adapter, and the redraft is taken if it meets more
    of the statements (:func:`report_language.stated_findings.choose_correction`); the
    returned pieces are the text taken.

    Raises
    ------
    inference.InferenceError
        When the images cannot be analysed or generation fails.
    """
    from inference import Turn

    paths = [spool_dir / image for image in request.images]
    key = (id(model), model.name, model.version, request.study_uid, tuple(map(str, paths)))

    def analyse() -> StudyAnalysis:
        return model.analyse(paths)

    analysis = analyses.get(key, analyse) if analyses is not None else analyse()
    history = [Turn(role, text) for role, text in request.history]  # type: ignore[arg-type]
    listed = None if request.findings is None else list(request.findings)
    pieces: list[str] = []
    for piece in model.stream_chat(
        analysis, request.context, history, request.instruction,
        indication=request.indication, findings=listed,
    ):
        pieces.append(piece)
        if on_text is not None:
            on_text(piece)
    if request.correction:
        pieces = _checked_correction(model, analysis, request, listed, pieces, on_text)
    return pieces


def _checked_correction(
    model: ChestXrayVLM,
    analysis: StudyAnalysis,
    request: TurnRequest,
    listed: Sequence[str] | None,
    pieces: list[str],
    on_text: Callable[[str], None] | None,
) -> list[str]:
    """The correction's text: the dialog answer, or a redraft where it does better."""
    from report_language.stated_findings import choose_correction, unmet_statements

    answer = "".join(pieces)
    if not unmet_statements(answer, request.instruction):
        return pieces
    logger.info("correction answer left stated findings unmet: redrafting")
    if on_text is not None:
        on_text(REDRAFT_NOTE)
    _, stream = model.stream_report(analysis, request.indication, findings=listed)
    redraft: list[str] = []
    for piece in stream:
        redraft.append(piece)
        if on_text is not None:
            on_text(piece)
    _, took_redraft = choose_correction(answer, "".join(redraft), request.instruction)
    return redraft if took_redraft else pieces


# --------------------------------------------------------------------------- the channel
class TurnChannel:
    """One turn's Redis pub/sub channel: the worker publishes, ``serve`` listens.

    Events are JSON objects with an ``event`` key: ``start``, ``token`` (``text``),
    ``done`` (``pieces``) or ``error`` (``detail``, ``unavailable``).

    Parameters
    ----------
    url
        The Redis URL (``broker.url``).
    name
        The channel (:data:`CHANNEL_PREFIX` + a random id).
    """

    def __init__(self, url: str, name: str) -> None:
        import redis

        self.name = name
        self._client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)

    def publish(self, event: str, **data: Any) -> None:
        """Publish one event (nobody listening is no error: the turn was given up)."""
        self._client.publish(self.name, json.dumps({"event": event, **data}))

    def close(self) -> None:
        """Close the connection."""
        self._client.close()


def ask_worker(
    broker: str,
    request: TurnRequest,
    timeout_s: float,
    on_text: Callable[[str], None] | None = None,
) -> list[str]:
    """Have a worker answer a turn (see the module docstring): its pieces, as
    :func:`answer_turn` returns them, and each piece to `on_text` as it comes.

    Parameters
    ----------
    broker
        The Redis broker URL.
    request
        The turn.
    timeout_s
        Longest wait for the next event (a worker to take the turn, the next piece).

    Raises
    ------
    TurnFailed
        When the broker cannot be reached, no worker took the turn or a worker stopped
        sending within `timeout_s`, or the worker could not answer.
    """
    import redis
    from kombu.exceptions import OperationalError as KombuOperationalError

    name = f"{CHANNEL_PREFIX}{uuid.uuid4().hex}"
    try:
        client = redis.Redis.from_url(broker, socket_connect_timeout=10)
        listener = client.pubsub(ignore_subscribe_messages=True)
        listener.subscribe(name)  # before sending: no event is published unheard
    except redis.RedisError as exc:
        raise TurnFailed(f"the queue cannot be reached ({type(exc).__name__})") from exc
    try:
        try:
            # Its own connection to `broker`: right whatever the app was configured for.
            with app.connection_for_write(broker) as connection:
                app.send_task(
                    DIALOG_TASK, args=(request.to_message(), name), queue=DIALOG_QUEUE,
                    connection=connection, ignore_result=True, expires=timeout_s,
                    retry=True, retry_policy={"max_retries": 1, "interval_start": 0.2,
                                              "interval_step": 0.5},
                )
        except (KombuOperationalError, OSError) as exc:
            raise TurnFailed(f"the queue cannot be reached ({type(exc).__name__})") from exc
        return _relay(listener, timeout_s, on_text)
    except redis.RedisError as exc:
        raise TurnFailed(f"the queue's connection failed ({type(exc).__name__})") from exc
    finally:
        try:
            listener.close()
            client.close()
        except redis.RedisError:
            pass


def _relay(listener: Any, timeout_s: float, on_text: Callable[[str], None] | None) -> list[str]:
    """Pass the events of a turn's channel on until ``done`` or ``error``."""
    started = False
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            if not started:
                raise TurnFailed(
                    f"no worker took the dialog turn within {timeout_s:.0f} s; is a "
                    "'dicom_node worker' consuming the dialog queue running?"
                )
            raise TurnFailed(
                f"the worker answering the dialog turn sent nothing for {timeout_s:.0f} s "
                "(stopped or lost); please ask again"
            )
        message = listener.get_message(timeout=min(left, 1.0))
        if message is None or message.get("type") != "message":
            continue
        try:
            event = json.loads(message["data"])
            kind = event["event"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TurnFailed("the worker sent a malformed event", unavailable=False) from exc
        deadline = time.monotonic() + timeout_s
        if kind == "start":
            started = True
        elif kind == "token":
            if on_text is not None:
                on_text(str(event.get("text", "")))
        elif kind == "done":
            return [str(piece) for piece in event.get("pieces", [])]
        elif kind == "error":
            raise TurnFailed(
                str(event.get("detail", "the worker could not answer")),
                unavailable=bool(event.get("unavailable", True)),
            )


def run_on_worker(
    model_provider: Callable[[], ChestXrayVLM],
    request_data: Any,
    channel: TurnChannel,
    spool_dir: Path,
    analyses: AnalysisStore,
) -> bool:
    """The worker's side of a turn: answer it and publish the events; whether it was
    answered. Never raises: every failure is published as an ``error`` event."""
    from dicom_node.errors import TransientJobError

    channel.publish("start")
    try:
        request = TurnRequest.from_message(request_data)
    except ValueError as exc:
        channel.publish("error", detail=str(exc), unavailable=False)
        return False
    try:
        model = model_provider()
    except TransientJobError as exc:  # the model is not ready, or cannot be loaded
        channel.publish("error", detail=f"{exc}; try again later", unavailable=True)
        return False
    try:
        pieces = answer_turn(
            model, request, spool_dir, lambda text: channel.publish("token", text=text),
            analyses,
        )
    except Exception as exc:  # noqa: BLE001 - reported to serve, logged without PHI
        logger.error("dialog turn failed on the worker: %s", describe_exception(exc),
                     exc_info=True)
        channel.publish(
            "error",
            detail=f"the model cannot process the study ({type(exc).__name__}); see the "
            "worker's log",
            unavailable=True,
        )
        return False
    channel.publish("done", pieces=pieces)
    return True


__all__ = [
    "CHANNEL_PREFIX",
    "DIALOG_TASK",
    "REDRAFT_NOTE",
    "AnalysisStore",
    "RecentAnalyses",
    "TurnChannel",
    "TurnFailed",
    "TurnRequest",
    "answer_turn",
    "ask_worker",
    "run_on_worker",
]
