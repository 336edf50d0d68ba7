"""Fixtures of the dialog API tests.

* ``api``: a drafted study in a fresh SQLite node database, the tiny model, and a FastAPI
  ``TestClient`` on the app; the service's threads are stopped at teardown. ``pg_api`` is
  the same on a throwaway PostgreSQL database (skipped when no server answers).
* ``orthanc``: a real Orthanc on loopback (bind() shim, Nagle off), once per session,
  stopped after it; it is the PACS that receives the SR chain.
* ``start_api_server``: the API served by :class:`dicom_node.api.ApiServer` (uvicorn in a
  thread, port 0), stopped at teardown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from apihelpers import (
    ApiUnderTest,
    api_settings,
    seed_drafted_study,
)
from fastapi.testclient import TestClient
from support.orthanc import Orthanc
from support.peers import build_bind_shim

from dicom_node.api import ApiServer, DialogService, create_app
from dicom_node.settings import Settings
from dicom_node.store import Database


@contextmanager
def _api_under_test(
    folder: Path, bundle: Path, model: Any, image: Path, database_url: str | None = None
) -> Iterator[ApiUnderTest]:
    sections: dict[str, Any] = {} if database_url is None else {"database": {"url": database_url}}
    settings = api_settings(folder, bundle, **sections)
    db = Database(settings.database_url)
    if database_url is not None:
        db.drop_all()
    db.create_all()
    service = DialogService(settings, db, lambda: model)
    try:
        study = seed_drafted_study(settings, db, model, image)
        with TestClient(create_app(service)) as client:
            yield ApiUnderTest(client, settings, db, service, study)
    finally:
        service.close()
        db.dispose()


@pytest.fixture
def api(tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiUnderTest]:
    """The dialog API (TestClient) over a SQLite node database holding one drafted study."""
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    with _api_under_test(tmp_path / "node", tiny_bundle, tiny_model, chest_cr_path) as under:
        yield under


@pytest.fixture
def pg_api(tmp_path: Path, tiny_bundle: Path, tiny_model: Any, chest_cr_path: Path,
           postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiUnderTest]:
    """The dialog API over the throwaway PostgreSQL database."""
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)
    with _api_under_test(tmp_path / "node", tiny_bundle, tiny_model, chest_cr_path,
                         postgres_url) as under:
        yield under


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    """A real Orthanc on 127.0.0.1 (fails, naming the package, when not installed)."""
    folder = tmp_path_factory.mktemp("orthanc")
    try:
        env = dict(os.environ, TCP_NODELAY="1", LD_PRELOAD=str(build_bind_shim(folder)))
        server = Orthanc(folder, env).start()
    except (RuntimeError, FileNotFoundError) as exc:
        pytest.fail(f"{exc} (apt-get install orthanc)", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_api_server() -> Iterator[Callable[..., ApiServer]]:
    """Factory: ``start_api_server(settings, database=None)`` serves the API; all stop after."""
    started: list[ApiServer] = []

    def start(settings: Settings, database: Database | None = None) -> ApiServer:
        server = ApiServer(settings, database)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
