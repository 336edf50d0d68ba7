"""The node's commands of the ``dicom_node`` CLI: ``serve`` and ``status``.

Registered on the main app by :mod:`dicom_node.cli`, like the training commands; the
inference stack is not imported here.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer
from rich.table import Table

from .cli import ConfigOption, _fail, app, console
from .errors import NodeError
from .settings import Settings, load_settings

#: Line printed (and flushed) once the SCP listens; scripts and tests read the port from it.
LISTENING_PREFIX = "dicom_node listening on"
#: Log line format of the node's commands.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Level of pynetdicom's loggers: its INFO and DEBUG messages show full UIDs, and C-FIND
#: identifiers (patient names and IDs) unless those are turned off.
PYNETDICOM_LOG_LEVEL = logging.WARNING


def _node_settings(config: Path | None, **overrides: object) -> Settings:
    """Load settings and configure logging, without importing the inference stack."""
    try:
        settings = load_settings(config, **overrides)
    except NodeError as exc:
        raise _fail(str(exc)) from exc
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    logging.getLogger("pynetdicom").setLevel(PYNETDICOM_LOG_LEVEL)
    return settings


@app.command("serve")
def serve(
    port: Annotated[
        int | None, typer.Option(help="SCP port (node.port; 0 = any free port).")
    ] = None,
    ae_title: Annotated[
        str | None, typer.Option(help="The node's AE title (node.ae_title).")
    ] = None,
    bind_address: Annotated[
        str | None, typer.Option(help="Listen address (node.bind_address).")
    ] = None,
    storage: Annotated[
        Path | None, typer.Option(help="Storage folder (storage.folder).", file_okay=False)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Receive studies (C-STORE/C-ECHO SCP) and queue report jobs for complete chest studies.

    Runs until SIGINT or SIGTERM, then closes the associations and exits 0. Prints one line
    'dicom_node listening on HOST:PORT as AE' when ready.
    """
    settings = _node_settings(
        config,
        node={"port": port, "ae_title": ae_title, "bind_address": bind_address},
        storage={"folder": storage},
    )
    from .service import NodeService

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {
        signum: signal.signal(signum, _on_signal) for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        try:
            service = NodeService(settings)
            host, bound_port = service.start()
        except NodeError as exc:
            raise _fail(str(exc)) from exc
        try:
            sys.stdout.write(
                f"{LISTENING_PREFIX} {host}:{bound_port} as {settings.node.ae_title}\n"
            )
            sys.stdout.flush()
            stop.wait()
        finally:
            service.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Newest entries listed per table.")] = 20,
    config: ConfigOption = None,
) -> None:
    """List studies (by UID digest), report jobs and the SR outbox from the node's database."""
    settings = _node_settings(config)
    from sqlalchemy.exc import SQLAlchemyError

    from .delivery import delivery_state
    from .status import collect_status
    from .store import Database

    try:
        db = Database(settings.database_url)
        db.create_all()
        try:
            now = datetime.now(UTC)
            report = collect_status(db, settings.node.stable_seconds, now, limit=limit)
            delivery = delivery_state(db, now)
        finally:
            db.dispose()
    except NodeError as exc:
        raise _fail(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise _fail(f"cannot read the database: {type(exc).__name__}: {exc}") from exc
    if as_json:
        data = report.to_json()
        data["delivery"] = delivery.to_json()
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    counts = report.counts
    console.print(
        f"{counts['studies']['total']} studies, {counts['studies']['instances']} instances; "
        "jobs "
        + ", ".join(f"{state} {n}" for state, n in counts["jobs"].items())
        + "; outbox "
        + ", ".join(f"{state} {n}" for state, n in counts["outbox"].items()),
        highlight=False,
    )
    studies = Table(title="Studies (newest first)")
    for column in ("study", "instances", "last received", "state", "jobs"):
        studies.add_column(column)
    for row in report.studies:
        state = f"{row.state}: {row.reason}" if row.reason else row.state
        studies.add_row(
            row.study,
            str(row.instances),
            row.last_received_at.isoformat(timespec="seconds"),
            state,
            str(row.jobs),
        )
    console.print(studies)
    jobs = Table(title="Jobs (newest first)")
    for column in ("id", "study", "state", "instances", "attempts", "created", "error"):
        jobs.add_column(column)
    for job in report.jobs:
        jobs.add_row(
            str(job.id),
            job.study,
            job.state,
            str(job.instances),
            str(job.attempts),
            job.created_at.isoformat(timespec="seconds"),
            job.error or "",
        )
    console.print(jobs)
    outbox = Table(title="Outbox (newest first)")
    for column in ("id", "study", "destination", "state", "attempts", "next attempt", "error"):
        outbox.add_column(column)
    for item in report.outbox:
        outbox.add_row(
            str(item.id),
            item.study,
            item.destination,
            item.state,
            str(item.attempts),
            item.next_attempt_at.isoformat(timespec="seconds") if item.next_attempt_at else "",
            item.last_error or "",
        )
    console.print(outbox)
    if delivery.oldest_undelivered_at is not None:
        next_at = delivery.next_attempt_at
        console.print(
            f"delivery: {delivery.due} due now; next attempt "
            f"{next_at.isoformat(timespec='seconds') if next_at else '-'}; oldest undelivered "
            f"SR queued {delivery.oldest_undelivered_at.isoformat(timespec='seconds')}, "
            f"up to {delivery.max_attempts} attempt(s)",
            highlight=False,
        )
