"""Fixtures of the registry and retrain tests: a second tiny bundle, phantom data, databases."""

from __future__ import annotations

from pathlib import Path

import pytest


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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, then the throwaway PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.db'}"
    url: str = request.getfixturevalue("postgres_url")
    from dicom_node.store import Database

    db = Database(url)
    try:
        db.drop_all()
    finally:
        db.dispose()
    return url
