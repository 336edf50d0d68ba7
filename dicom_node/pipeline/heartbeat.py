"""Heartbeats: a claimed row is kept fresh while its work runs, so a dead worker shows soon.

A worker claims a job row (``running``) or outbox rows (``sending``) before it works on them.
While it works, a :class:`Heartbeat` thread rewrites the rows' ``updated_at`` every
:func:`heartbeat_interval` seconds. A claimed row whose ``updated_at`` is older than its
timeout (``worker.stale_job_s``, ``delivery.claim_timeout_s``) belongs to a worker that died
(killed, host lost) and may be claimed again. The interval is a fraction of the timeout, so
a few beats may be missed (a busy database) before a living worker is taken for dead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

from dicom_node._privacy import describe_exception

logger = logging.getLogger(__name__)

#: Beats per timeout: a claim is lost only after this many beats in a row were missed.
BEATS_PER_TIMEOUT = 4
#: Seconds the end of the work waits for a beat in progress (its update no longer matches
#: rows the work has released, so a late beat is harmless).
JOIN_TIMEOUT_S = 5.0


def heartbeat_interval(timeout_s: float) -> float:
    """Seconds between two beats for a claim that expires after `timeout_s` seconds."""
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s}")
    return timeout_s / BEATS_PER_TIMEOUT


class Heartbeat:
    """Calls `beat` every `interval_s` seconds in a daemon thread while the block runs.

    Use it as a context manager around the work on claimed rows. A beat that fails (the
    database briefly away) is logged and the next one tries again; the work goes on.

    Parameters
    ----------
    beat
        Refreshes the claimed rows; called with the current time (timezone-aware UTC).
    interval_s
        Seconds between two beats (see :func:`heartbeat_interval`).
    what
        What is kept alive, for log messages and the thread name (``"job 12"``); no
        patient data.
    max_s
        Stop beating after this many seconds (a hung job is then taken for dead, as a
        killed one would be); ``None`` = as long as the block runs.
    """

    def __init__(
        self,
        beat: Callable[[datetime], object],
        interval_s: float,
        what: str,
        max_s: float | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.beat = beat
        self.interval_s = interval_s
        self.what = what
        self.max_s = max_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(self.interval_s):
            if self.max_s is not None and time.monotonic() - started > self.max_s:
                logger.warning(
                    "%s has run longer than %.0f s; it is no longer reported alive",
                    self.what,
                    self.max_s,
                )
                return
            try:
                self.beat(datetime.now(UTC))
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried, never fatal
                logger.warning("heartbeat of %s failed: %s", self.what, describe_exception(exc))

    def __enter__(self) -> Heartbeat:
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"heartbeat {self.what}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(JOIN_TIMEOUT_S)
            self._thread = None


__all__ = ["BEATS_PER_TIMEOUT", "JOIN_TIMEOUT_S", "Heartbeat", "heartbeat_interval"]
