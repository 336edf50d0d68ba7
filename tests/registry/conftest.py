"""Fixtures of the registry and retrain tests: a second tiny bundle, phantom data, databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Environment variable with the PostgreSQL server URL (as in the node tests).
POSTGRES_URL_ENV = "DICOM_NODE_TEST_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(autouse=True)
def _no_config_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings come from the test only, never from a config file named in the environment."""
    monkeypatch.delenv("DICOM_NODE_CONFIG", raising=False)


@pytest.fixture(scope="session")
def second_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another tiny bundle (other random weights; manifest version 0.0.1)."""
    from inference import build_tiny_bundle

    return build_tiny_bundle(tmp_path_factory.mktemp("bundles-b") / "tiny-b", seed=1)


@pytest.fixture(scope="session")
def site_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six DICOM phantom studies (CR/DX, frontal), as a modality would send them."""
    from training.phantoms import PhantomConfig, write_phantoms

    out = tmp_path_factory.mktemp("site-phantoms")
    write_phantoms(out, 6, seed=11, fmt="dicom", config=PhantomConfig(size=64))
    return out


@pytest.fixture(scope="session")
def base_phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sixteen PNG phantoms: the base dataset a retrain mixes in."""
    from training.phantoms import PhantomConfig, write_phantoms

    out = tmp_path_factory.mktemp("base-phantoms")
    write_phantoms(out, 16, seed=12, fmt="png", config=PhantomConfig(size=64))
    return out


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL database, created for the session and dropped after."""
    pytest.importorskip("psycopg", reason="psycopg (PostgreSQL driver) is not installed")
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import OperationalError

    server = make_url(os.environ.get(POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL))
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    name = f"dicom_node_registry_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL is not reachable at {server.render_as_string()}: {exc}")
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, then the throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.db'}"
    url: str = request.getfixturevalue("postgres_url")
    from dicom_node.store import Base, Database

    db = Database(url)
    try:
        Base.metadata.drop_all(db.engine)
    finally:
        db.dispose()
    return url
