"""The node's operations endpoints: ``/healthz`` and Prometheus ``/metrics``.

``/healthz`` answers 200 with ``{"status": "ok", "checks": {...}}`` when every check
passes and 503 with ``"status": "unhealthy"`` and the failing checks otherwise. Checks: the
database answers, the DICOM server listens, the spool has room, the broker is reachable, the
embedded worker (when there is one) and the node's background threads (scheduler, worklist
poller, dialog API server) run, the model is not failed (its self-test, its build)
and the last ``worker.unhealthy_after_failures`` report jobs did not all fail. While the model
is still being built or loaded the answer is 200 with ``"status": "starting"``, and a
``"model"`` object tells how far it is. No endpoint shows patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from dicom_node.errors import NOT_DRAFTED_PREFIX
from dicom_node.ops import metrics
from dicom_node.store import Database, Job, JobState

logger = logging.getLogger(__name__)

#: A named health check: returns None when healthy, else the problem.
HealthCheck = Callable[[], str | None]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one health check."""

    name: str
    problem: str | None

    @property
    def ok(self) -> bool:
        """Whether the check passed."""
        return self.problem is None


def database_check(db: Database) -> HealthCheck:
    """A check that the database answers ``SELECT 1``."""

    def check() -> str | None:
        try:
            with db.session() as session:
                session.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            return f"database unreachable ({type(exc).__name__})"
        return None

    return check


def recent_jobs_check(db: Database, count: int) -> HealthCheck:
    """A check that fails when the last ``count`` finished report jobs all failed.

    One failed study is the study's problem; several in a row, with none drafted between
    them, are the node's (a broken model, a full disk). ``count`` 0 disables the check.
    """

    def check() -> str | None:
        if count <= 0:
            return None
        try:
            with db.session() as session:
                rows = list(
                    session.execute(
                        select(Job.state, Job.error)
                        .where(Job.state.in_([JobState.DONE, JobState.FAILED]))
                        .order_by(Job.finished_at.desc(), Job.id.desc())
                        .limit(count)
                    )
                )
        except SQLAlchemyError as exc:
            return f"cannot read the jobs ({type(exc).__name__})"
        if len(rows) < count or any(
            state is not JobState.FAILED or (error or "").startswith(NOT_DRAFTED_PREFIX)
            for state, error in rows
        ):
            return None  # a study the content check kept from drafting is not a node failure
        return f"the last {count} report jobs failed (latest: {rows[0][1] or 'no reason'})"

    return check


def run_checks(checks: dict[str, HealthCheck]) -> list[CheckResult]:
    """Run every check; a check that raises counts as failed."""
    results = []
    for name, check in checks.items():
        try:
            problem = check()
        except Exception as exc:  # noqa: BLE001 - a health check must not take the endpoint down
            problem = f"check failed ({type(exc).__name__})"
        results.append(CheckResult(name, problem))
    return results


def create_ops_app(
    checks: dict[str, HealthCheck],
    model_status: Callable[[], dict[str, object]] | None = None,
) -> FastAPI:
    """The FastAPI app of ``/healthz`` and ``/metrics``.

    Parameters
    ----------
    checks
        Named health checks (see :data:`HealthCheck`).
    model_status
        The model's state (:meth:`~dicom_node.models.readiness.ModelStatus.to_json`), shown
        as ``"model"``; a ``building`` or ``loading`` phase makes a healthy answer
        ``"starting"``.
    """
    app = FastAPI(title="dicom_node operations", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        results = run_checks(checks)
        healthy = all(result.ok for result in results)
        body: dict[str, object] = {
            "status": "ok" if healthy else "unhealthy",
            "checks": {r.name: "ok" if r.ok else r.problem for r in results},
        }
        if model_status is not None:
            model = model_status()
            body["model"] = model
            if healthy and model.get("phase") in ("building", "loading"):
                body["status"] = "starting"
        if not healthy:
            logger.warning(
                "health check failed: %s", ", ".join(r.name for r in results if not r.ok)
            )
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = [
    "CheckResult",
    "HealthCheck",
    "create_ops_app",
    "database_check",
    "recent_jobs_check",
    "run_checks",
]
