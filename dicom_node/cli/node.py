"""The node's commands of the ``dicom_node`` CLI: ``serve``, ``worker`` and ``status``.

Registered on the main app by :mod:`dicom_node.cli`, like the training commands; the
inference stack is not imported here.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from dicom_node.cli._app import ConfigOption, _fail, _node_settings, app, console, stop_on_signal
from dicom_node.errors import NodeError
from dicom_node.settings import Settings

#: Line printed (and flushed) once the SCP listens; scripts and tests read the port from it.
LISTENING_PREFIX = "dicom_node listening on"
#: Line printed after it with the base URL of /healthz and /metrics.
HTTP_PREFIX = "dicom_node http on"
#: Line printed after that with the base URL of the dialog API and reader page (if enabled).
API_PREFIX = "dicom_node api on"


#: The first demo build as measured by a first-run ``serve`` on this machine class (2 vCPU AMD
#: EPYC with AVX512-BF16, 2026-12-04: 26.5 min); CPUs without native bfloat16 take two to
#: three times as long.
DEMO_BUILD_MINUTES = 27


def _check_bundle(settings: Settings) -> None:
    """Fail fast on a configured bundle that is missing; announce a first-run demo build.

    Only the default bundle (``models/demo``) is built when missing, in the background by the
    node's model warm-up; a missing bundle configured elsewhere is an error.
    """
    from dicom_node.models.readiness import demo_work_dir, needs_demo_build
    from dicom_node.settings import DEFAULT_BUNDLE

    bundle = settings.inference.bundle
    if (bundle / "manifest.json").exists():
        return
    if bundle != DEFAULT_BUNDLE:
        raise _fail(
            f"no model bundle at {bundle} (inference.bundle); build one with "
            f"'dicom_node model build-demo --out {bundle}' or point inference.bundle at one"
        )
    if needs_demo_build(settings):
        console.print(
            f"[bold]First run:[/] the node listens now and builds the demo model into {bundle} "
            "in the background (SmolLM2-135M + MiniLM trained on synthetic phantoms; about "
            f"{DEMO_BUILD_MINUTES} minutes on 2 CPU cores with AVX512-BF16, two to three times "
            "longer without). Studies are received and queued meanwhile and drafted once the "
            f"model is ready; progress: /healthz, 'dicom_node status', "
            f"{demo_work_dir(bundle) / 'build.log'}. An interrupted build resumes.",
            highlight=False,
        )


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
    """Run the node: receive studies, draft their reports and deliver them to the PACS.

    Without broker.url the worker runs in this process. Runs until SIGINT or SIGTERM, then
    closes the associations and exits 0. Prints 'dicom_node listening on HOST:PORT as AE'
    when ready, then the URLs of /healthz and /metrics and of the dialog API (if enabled).
    """
    settings = _node_settings(
        config,
        node={"port": port, "ae_title": ae_title, "bind_address": bind_address},
        storage={"folder": storage},
    )
    from dicom_node.jobqueue import is_embedded
    from dicom_node.jobqueue.app import dialog_on_workers
    from dicom_node.models.readiness import needs_demo_build
    from dicom_node.ops.service import NodeService

    # With its dialog on the workers serve loads no model; it only builds a missing demo one.
    if is_embedded(settings) or (settings.api.enabled and (
        not dialog_on_workers(settings) or needs_demo_build(settings)
    )):
        _check_bundle(settings)
    with stop_on_signal() as stop:
        try:
            service = NodeService(settings)
            host, bound_port = service.start()
        except NodeError as exc:
            raise _fail(str(exc)) from exc
        try:
            sys.stdout.write(
                f"{LISTENING_PREFIX} {host}:{bound_port} as {settings.node.ae_title}\n"
            )
            if service.http is not None:
                sys.stdout.write(f"{HTTP_PREFIX} {service.http.url}\n")
            if service.api is not None:
                sys.stdout.write(f"{API_PREFIX} {service.api.url}\n")
            sys.stdout.flush()
            stop.wait()
        finally:
            service.stop()


@app.command("worker")
def worker(
    queues: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated queues: dialog, gpu, delivery, training (worker.queues)."
        ),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Tasks run at a time (worker.concurrency).")
    ] = None,
    pool: Annotated[
        str,
        typer.Option(
            help="prefork: child processes, time limits enforced (default); threads: one "
            "process, no time limits."
        ),
    ] = "prefork",
    hostname: Annotated[
        str | None, typer.Option(help="Celery node name (default: celery@HOST).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Run a queue worker against the broker (Redis), e.g. on a GPU host.

    Consumes the given queues until SIGINT or SIGTERM (a running job finishes first). Needs
    broker.url; without a broker, 'dicom_node serve' runs the worker in its own process.
    """
    overrides: dict[str, object] = {"concurrency": concurrency}
    if queues is not None:
        overrides["queues"] = [name.strip() for name in queues.split(",") if name.strip()]
    settings = _node_settings(config, worker=overrides)
    from dicom_node.jobqueue import configure_app, is_embedded, run_worker
    from dicom_node.jobqueue.worker import MODEL_QUEUES

    if is_embedded(settings):
        raise _fail(
            "dicom_node worker needs a broker: set broker.url (DICOM_NODE_BROKER__URL), e.g. "
            "redis://host:6379/0; without one, 'dicom_node serve' runs the worker itself"
        )
    if set(MODEL_QUEUES) & set(settings.worker.queues) and not (
        settings.inference.bundle / "manifest.json"
    ).exists():
        raise _fail(
            f"no model bundle at {settings.inference.bundle} (inference.bundle); copy the "
            "site's bundle to this host or build one with 'dicom_node model build-demo'"
        )
    if pool not in ("prefork", "threads"):
        raise _fail(f"--pool must be prefork or threads, got {pool!r}")
    from dicom_node.jobqueue import probe_model
    from dicom_node.models.readiness import READINESS, health_problem
    from dicom_node.ops.health import HealthCheck

    app_ = configure_app(settings)
    consumed = list(settings.worker.queues)
    checks: dict[str, HealthCheck] = {}
    if set(MODEL_QUEUES) & set(consumed):
        checks["model"] = lambda: health_problem(READINESS.status())
        if not probe_model(settings):
            # Report jobs and turns stay queued for a worker with a good model.
            consumed = [name for name in consumed if name not in MODEL_QUEUES]
    http = None
    if settings.worker.metrics_port is not None:
        from dicom_node.api.http_server import BackgroundHttpServer
        from dicom_node.ops.health import create_ops_app

        http = BackgroundHttpServer(
            create_ops_app(checks, lambda: READINESS.status().to_json()),
            settings.node.bind_address,
            settings.worker.metrics_port,
            "metrics",
        )
        http.start()
    try:
        if not consumed:
            console.print(
                "the model failed its self-test and this worker has no other queue: it "
                "consumes nothing until restarted (see /healthz)", highlight=False,
            )
            with stop_on_signal() as stop:
                stop.wait()
            return
        run_worker(
            app_,
            settings,
            consumed,
            settings.worker.concurrency,
            pool="prefork" if pool == "prefork" else "threads",
            hostname=hostname,
        )
    except NodeError as exc:
        raise _fail(str(exc)) from exc
    finally:
        if http is not None:
            http.stop()


def _model_line(settings: Settings) -> dict[str, str]:
    """The configured bundle as ``status`` shows it: present, or how far its build is."""
    from dicom_node.models.readiness import (
        demo_work_dir,
        describe_progress,
        needs_demo_build,
        read_progress,
    )

    bundle = settings.inference.bundle
    manifest = bundle / "manifest.json"
    if manifest.is_file():
        try:
            info = json.loads(manifest.read_text(encoding="utf-8"))
            name = f"{info.get('name', '?')} {info.get('version', '?')}"
        except (OSError, ValueError):
            name = "unreadable manifest"
        return {"state": "present", "detail": f"{bundle} ({name})"}
    if needs_demo_build(settings):
        progress = read_progress(demo_work_dir(bundle))
        if progress is not None:
            return {"state": "building", "detail": "demo model, " + describe_progress(progress)}
        return {"state": "missing", "detail": f"{bundle}: the first 'serve' builds it"}
    return {"state": "missing", "detail": f"no bundle at {bundle} (inference.bundle)"}


@app.command("status")
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Newest entries listed per table.")] = 20,
    config: ConfigOption = None,
) -> None:
    """List studies (by UID digest), report jobs and the SR outbox from the node's database."""
    settings = _node_settings(config)
    from sqlalchemy.exc import SQLAlchemyError

    from dicom_node.ops.status import collect_status
    from dicom_node.pipeline.delivery import delivery_state
    from dicom_node.store import Database

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
    model = _model_line(settings)
    if as_json:
        data = report.to_json()
        data["delivery"] = delivery.to_json()
        data["model"] = model
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    console.print(f"model: {model['state']}: {model['detail']}", highlight=False)
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
