"""deploy/: the example configuration covers every key and validates; compose and units."""

from __future__ import annotations

import configparser
import importlib.util
import os
import stat
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from kombu import Connection
from pydantic import BaseModel
from sqlalchemy import text
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.jobqueue.app import broker_url
from dicom_node.settings import Settings, load_settings
from dicom_node.store import Database

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
EXAMPLE = DEPLOY / "config.example.toml"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("DICOM_NODE_"):
            monkeypatch.delenv(name)


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_example_config",
                                                  DEPLOY / "make_example_config.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def settings_keys(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Every key of the settings, mapping sections' entries as ``*``."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        candidates = (annotation, *typing.get_args(annotation))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        mapped = [
            typing.get_args(c)[1] for c in candidates
            if typing.get_origin(c) is dict and isinstance(typing.get_args(c)[1], type)
            and issubclass(typing.get_args(c)[1], BaseModel)
        ]
        if mapped:
            keys |= settings_keys(mapped[0], f"{prefix}{name}.*.")
        elif nested:
            keys |= settings_keys(nested[0], f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def toml_keys(data: dict[str, Any], mappings: set[str], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in data.items():
        path = prefix + name
        if isinstance(value, dict):
            if path in mappings:
                for entry in value.values():
                    keys |= toml_keys(entry, mappings, f"{path}.*.")
            else:
                keys |= toml_keys(value, mappings, f"{path}.")
        else:
            keys.add(path)
    return keys


def uncommented(text: str) -> str:
    """The example with every optional key and section switched on (alternatives stay off)."""
    out = []
    for line in text.splitlines():
        candidate = line[2:] if line.startswith("# ") else None
        if candidate is not None and not line.rstrip().endswith("# alternative"):
            stripped = candidate.strip()
            is_table = stripped.startswith("[") and stripped.endswith("]")
            try:
                is_key = not is_table and bool(tomllib.loads(candidate))
            except tomllib.TOMLDecodeError:
                is_key = False
            if is_table or is_key:
                out.append(candidate)
                continue
        out.append(line)
    return "\n".join(out) + "\n"


def test_the_example_config_is_generated_from_the_current_settings() -> None:
    assert _generator().render() == EXAMPLE.read_text(encoding="utf-8"), (
        "deploy/config.example.toml is out of date: run python deploy/make_example_config.py"
    )


def test_the_example_config_checks_and_covers_every_key(tmp_path: Path) -> None:
    checked = runner.invoke(app, ["config", "check", str(EXAMPLE)])
    assert checked.exit_code == 0, checked.output

    full = tmp_path / "full.toml"
    full.write_text(uncommented(EXAMPLE.read_text(encoding="utf-8")), encoding="utf-8")
    checked_full = runner.invoke(app, ["config", "check", str(full)])
    assert checked_full.exit_code == 0, checked_full.output
    assert '"ae_title": "RIS"' in checked_full.output  # the optional sections are on

    expected = settings_keys()
    found = toml_keys(tomllib.loads(full.read_text(encoding="utf-8")),
                      {"calling_aes", "pacs", "api.users"})
    alternatives = {"api.users.*.token"}
    assert expected - found == alternatives, sorted(expected - found)
    assert "# token = " in EXAMPLE.read_text(encoding="utf-8")
    # Every key line has a comment right above it.
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        key_line = line.removeprefix("# ")
        if " = " in key_line and key_line.split(" = ")[0].isidentifier() and index > 8:
            assert lines[index - 1].startswith("# "), line


def test_compose_runs_the_node_and_its_workers_with_health_checks() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"redis", "postgres", "node", "gpu-worker", "delivery-worker",
            "training-worker"} <= set(services)
    assert services["node"]["command"] == ["serve"]
    # One model for the dialog turns and the drafts (docs/node.md, "Serving at scale").
    assert services["gpu-worker"]["command"][:3] == ["worker", "--queues", "dialog,gpu"]
    assert services["delivery-worker"]["command"][:3] == ["worker", "--queues", "delivery"]
    assert services["training-worker"]["command"][:3] == ["worker", "--queues", "training"]
    device = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert "8081/healthz" in " ".join(services["node"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["gpu-worker"]["healthcheck"]["test"])
    assert {"spool", "reports", "models", "pgdata"} <= set(compose["volumes"])
    mounts = services["gpu-worker"]["volumes"]
    assert any(m.startswith("spool:") for m in mounts) and any(
        m.startswith("models:") for m in mounts)


def test_compose_publishes_the_node_on_loopback_unless_told_otherwise() -> None:
    services = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text(encoding="utf-8"))[
        "services"]
    ports = services["node"]["ports"]
    assert [port.rsplit(":", 1)[1] for port in ports] == ["11112", "8081", "8080"]
    # "${DICOM_PUBLISH_ADDRESS:-127.0.0.1}:11112:11112": loopback unless .env names one
    assert all(port.startswith("${") and ":-127.0.0.1}:" in port for port in ports), ports
    assert not [name for name, service in services.items()
                if name != "node" and service.get("ports")]


def test_systemd_units_cap_memory_and_create_private_files() -> None:
    for name in ("dicom-node.service", "dicom-node-worker@.service"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read(DEPLOY / "systemd" / name)
        assert unit["Service"]["UMask"] == "0077"
        assert unit["Service"]["MemoryMax"].rstrip("G").isdigit()


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, under which SQLite would create its files 0644."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def test_the_sqlite_database_and_queue_are_private(tmp_path: Path, umask_022: None) -> None:
    db = Database(f"sqlite:///{tmp_path / 'node.db'}")
    db.create_all()
    with db.session() as session:
        session.execute(text("CREATE TABLE written (x INTEGER)"))
    with Connection(broker_url(load_settings(None, storage={"folder": tmp_path}))) as queue:
        queue.SimpleQueue("gpu").put({"job": 1})
    names = ["node.db", "node.db-wal", "node.db-shm", "broker.sqlite"]
    modes = {name: stat.S_IMODE((tmp_path / name).stat().st_mode) for name in names}
    db.dispose()
    assert modes == dict.fromkeys(names, 0o600)


def test_an_existing_world_readable_database_is_narrowed(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "node.db"
    path.touch(mode=0o644)
    Database(f"sqlite:///{path}").dispose()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_systemd_units_start_the_node_and_one_worker_per_queue() -> None:
    for name, command in (("dicom-node.service", "dicom_node serve"),
                          ("dicom-node-worker@.service", "dicom_node worker --queues %i")):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.read(DEPLOY / "systemd" / name)
        assert command in unit["Service"]["ExecStart"]
        assert unit["Service"]["User"] == "dicom_node"
        assert unit["Install"]["WantedBy"] == "multi-user.target"
