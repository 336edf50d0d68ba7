"""Live updates of the reader page: :class:`LiveEvents`, a broadcaster of server-sent events.

The page keeps one ``GET /api/events`` stream open and reloads what an event names:

* ``worklist``: a study arrived, a draft job changed state, a version or proposal was made
  or decided, a study was marked urgent; the page reloads its worklist;
* ``study`` (``{"study_instance_uid"}``): the study's report, dialog or proposals changed;
  the page reloads the study when it shows it.

Events come from two places. The API's own routes publish at once what they changed
(:meth:`LiveEvents.study_changed`). A watcher task polls the database every ``poll_s``
seconds with a few cheap aggregate queries (maxima of primary keys and timestamps, job
counts per state) and publishes what changed since its last look: job states written by
workers, and versions, proposals and messages written by any other ``serve`` process on the
same database. So several API processes work together, each within ``poll_s`` of the other's
change. The watcher runs only while a stream is open.

An event names a study by its Study Instance UID only (the authenticated reader's page
lists the UIDs anyway); no patient data and no report text go into an event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Iterable
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from dicom_node.store import (
    Database,
    DialogMessage,
    Job,
    Proposal,
    ReportVersion,
    Study,
    WorklistEntry,
)

logger = logging.getLogger(__name__)

#: Seconds between two looks at the database for changes made outside this process.
LIVE_POLL_S = 2.0
#: Seconds of silence after which a stream sends a comment (proxies close idle streams).
KEEPALIVE_S = 15.0

_Item = tuple[str, dict[str, object]] | None


def sse_event(event: str, data: object) -> str:
    """One server-sent event with a JSON payload.

    Parameters
    ----------
    event
        The event's name (``worklist``, ``study``, ...).
    data
        Its payload, sent as JSON.

    Returns
    -------
    str
        The event's lines, ending in the blank line that ends an event.
    """
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


@dataclasses.dataclass(frozen=True)
class DatabaseMark:
    """How far the node's tables were when the watcher last looked."""

    #: Studies: how many, the newest arrival, how many are marked urgent, the RIS's last
    #: worklist answer (its priorities).
    studies: tuple[object, ...]
    #: Jobs: the newest id, start and finish, and how many there are in each state.
    jobs: tuple[object, ...]
    version_id: int
    proposal_id: int
    decided_at: datetime | None
    message_id: int


def read_mark(db: Database) -> DatabaseMark:
    """The tables' state, in seven aggregate queries.

    Parameters
    ----------
    db
        The node's database.

    Returns
    -------
    DatabaseMark
        The maxima and counts the watcher compares.
    """
    with db.session() as session:
        studies = tuple(session.execute(select(
            func.count(Study.id), func.max(Study.last_received_at),
            func.count(Study.id).filter(Study.urgent),
        )).one()) + (session.scalar(select(func.max(WorklistEntry.fetched_at))),)
        jobs = tuple(session.execute(select(
            func.max(Job.id), func.max(Job.started_at), func.max(Job.finished_at),
        )).one()) + tuple(sorted(
            (str(state), count) for state, count in session.execute(
                select(Job.state, func.count(Job.id)).group_by(Job.state))
        ))
        version_id = session.scalar(select(func.max(ReportVersion.id))) or 0
        proposal_id, decided_at = session.execute(
            select(func.max(Proposal.id), func.max(Proposal.decided_at))).one()
        message_id = session.scalar(select(func.max(DialogMessage.id))) or 0
    return DatabaseMark(studies, jobs, version_id, proposal_id or 0, decided_at, message_id)


def changed_studies(db: Database, since: DatabaseMark) -> list[str]:
    """The studies whose report, proposals or dialog changed after `since`.

    Parameters
    ----------
    db
        The node's database.
    since
        The watcher's previous mark.

    Returns
    -------
    list of str
        Study Instance UIDs, sorted.
    """
    proposal_changed = Proposal.id > since.proposal_id
    if since.decided_at is not None:
        proposal_changed = or_(proposal_changed, Proposal.decided_at > since.decided_at)
    else:
        proposal_changed = or_(proposal_changed, Proposal.decided_at.is_not(None))
    queries = [
        select(Study.study_instance_uid).join(ReportVersion, ReportVersion.study_id == Study.id)
        .where(ReportVersion.id > since.version_id),
        select(Study.study_instance_uid).join(Proposal, Proposal.study_id == Study.id)
        .where(proposal_changed),
        select(Study.study_instance_uid).join(DialogMessage, DialogMessage.study_id == Study.id)
        .where(DialogMessage.id > since.message_id),
    ]
    uids: set[str] = set()
    with db.session() as session:
        for query in queries:
            uids.update(session.scalars(query.distinct()))
    return sorted(uids)


class LiveEvents:
    """Sends the node's changes to every open event stream of the reader page.

    Parameters
    ----------
    db
        The node's database, watched for changes made by other processes.
    poll_s
        Seconds between two looks at the database.
    keepalive_s
        Seconds of silence after which a stream sends a comment line.
    """

    def __init__(
        self, db: Database, poll_s: float = LIVE_POLL_S, keepalive_s: float = KEEPALIVE_S
    ) -> None:
        if poll_s <= 0 or keepalive_s <= 0:
            raise ValueError("poll_s and keepalive_s must be positive")
        self.db = db
        self.poll_s = poll_s
        self.keepalive_s = keepalive_s
        self._streams: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[_Item]]] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def stream_count(self) -> int:
        """How many event streams are open."""
        return len(self._streams)

    # ------------------------------------------------------------------ publishing
    def publish(self, event: str, data: dict[str, object]) -> None:
        """Send one event to every open stream; safe to call from any thread.

        Parameters
        ----------
        event
            The event's name.
        data
            Its JSON payload.
        """
        for loop, queue in list(self._streams):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, (event, data))
            except RuntimeError:  # the stream's loop has closed: nobody listens there
                self._streams.discard((loop, queue))

    def study_changed(self, study_uids: Iterable[str]) -> None:
        """Tell every page that these studies changed, and so did the worklist.

        Parameters
        ----------
        study_uids
            Study Instance UIDs of the changed studies.
        """
        for uid in study_uids:
            self.publish("study", {"study_instance_uid": uid})
        self.publish("worklist", {})

    def close(self) -> None:
        """End every open stream (the server stops); new streams end at once."""
        self._closed = True
        for loop, queue in list(self._streams):
            try:
                loop.call_soon_threadsafe(queue.put_nowait, None)
            except RuntimeError:
                continue
        watcher = self._watcher
        if watcher is not None and not watcher.done():
            try:
                watcher.get_loop().call_soon_threadsafe(watcher.cancel)
            except RuntimeError:  # its loop has closed: the task is gone with it
                pass

    # ------------------------------------------------------------------ streams
    async def stream(self) -> AsyncIterator[str]:
        """One page's event stream: ``ready`` first, then the node's changes.

        Yields
        ------
        str
            Server-sent events, and a comment line after ``keepalive_s`` of silence.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        entry = (loop, queue)
        self._streams.add(entry)
        if self._watcher is None or self._watcher.done():
            self._watcher = loop.create_task(self._watch())
        try:
            yield sse_event("ready", {"poll_s": self.poll_s})
            while not self._closed:
                try:
                    item = await asyncio.wait_for(queue.get(), self.keepalive_s)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if item is None:
                    return
                yield sse_event(*item)
        finally:
            self._streams.discard(entry)

    async def _watch(self) -> None:
        """Poll the database while streams are open; publish what others changed."""
        mark: DatabaseMark | None = None
        while self._streams and not self._closed:
            try:
                mark = await run_in_threadpool(self._look, mark)
            except SQLAlchemyError as exc:
                # The page keeps its stream; the next look tries again.
                logger.warning("live updates: the database cannot be read (%s)",
                               type(exc).__name__)
            await asyncio.sleep(self.poll_s)

    def _look(self, previous: DatabaseMark | None) -> DatabaseMark:
        mark = read_mark(self.db)
        if previous is None or mark == previous:
            return mark
        studies = changed_studies(self.db, previous)
        for uid in studies:
            self.publish("study", {"study_instance_uid": uid})
        self.publish("worklist", {})
        return mark


__all__ = [
    "KEEPALIVE_S",
    "LIVE_POLL_S",
    "DatabaseMark",
    "LiveEvents",
    "changed_studies",
    "read_mark",
    "sse_event",
]
