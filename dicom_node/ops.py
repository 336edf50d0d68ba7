"""The node's operations endpoints: ``/healthz`` and Prometheus ``/metrics``.

``/healthz`` answers 200 with ``{"status": "ok", "checks": {...}}`` when every check
passes and 503 with ``"status": "unhealthy"`` and the failing checks otherwise. Checks: the
database answers, the DICOM server listens, the spool has room, the broker is reachable, and
the embedded worker (when there is one) runs. No endpoint shows patient data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from . import metrics
from .store import Database

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


def create_ops_app(checks: dict[str, HealthCheck]) -> FastAPI:
    """The FastAPI app of ``/healthz`` and ``/metrics``.

    Parameters
    ----------
    checks
        Named health checks (see :data:`HealthCheck`).
    """
    app = FastAPI(title="dicom_node operations", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        results = run_checks(checks)
        healthy = all(result.ok for result in results)
        body = {
            "status": "ok" if healthy else "unhealthy",
            "checks": {r.name: "ok" if r.ok else r.problem for r in results},
        }
        if not healthy:
            logger.warning(
                "health check failed: %s", ", ".join(r.name for r in results if not r.ok)
            )
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


__all__ = ["CheckResult", "HealthCheck", "create_ops_app", "database_check", "run_checks"]
