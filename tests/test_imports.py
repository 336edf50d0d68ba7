"""The import structure: every module imports on its own, and the layers point one way.

Each check runs in a fresh interpreter: inside the test session every module is already
imported, which hides an import cycle (it only breaks when the module is imported first) and a
heavy import (it only shows in a process that never needed the package).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("report_language", "sr_templates", "inference", "training", "dicom_node")


def _modules() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            # __main__ runs the CLI; Alembic's env.py runs only inside Alembic's context.
            if parts[-1] == "__main__" or parts[-2:] == ("migrations", "env"):
                continue
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=env, check=False,
    )


def _loaded_after(statement: str) -> list[str]:
    result = _run(f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))")
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


#: Runs in one interpreter: loads the third-party libraries (none of our modules), then forks
#: one child per module, which imports it first. Each child sees our code as a fresh
#: interpreter does, without paying torch's import for each of ~150 modules.
_FORK_EACH = """
import json, os, sys, traceback
for library in ("numpy", "torch", "transformers", "peft", "onnxruntime", "pydicom",
                "highdicom", "pynetdicom", "sqlalchemy", "fastapi", "celery", "pydantic"):
    try:
        __import__(library)
    except ImportError:
        pass
assert not [m for m in sys.modules if m.split(".")[0] in %(packages)r]
failed = {}
for name in json.loads(sys.argv[1]):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            __import__(name)
            code = 0
        except BaseException:
            os.write(write, traceback.format_exc().strip().splitlines()[-1].encode())
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read) as pipe:
        message = pipe.read()
    _, status = os.waitpid(pid, 0)
    if status:
        failed[name] = message or f"exit status {status}"
print(json.dumps(failed))
"""


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    modules = _modules()
    assert len(modules) > 100
    result = subprocess.run(
        [sys.executable, "-c", _FORK_EACH % {"packages": PACKAGES}, json.dumps(modules)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("report_language", set()),
        ("sr_templates", {"report_language"}),
        ("inference", {"report_language"}),
        ("training", {"report_language", "inference"}),
    ],
)
def test_each_package_imports_only_the_layers_below_it(package: str, allowed: set[str]) -> None:
    loaded = _loaded_after(f"import {package}")
    ours = {name.split(".")[0] for name in loaded} & set(PACKAGES)
    assert ours - {package} <= allowed


def test_serve_and_the_dialog_import_nothing_from_training() -> None:
    loaded = _loaded_after(
        "import dicom_node.cli, dicom_node.ops.service, dicom_node.api.app, "
        "dicom_node.api.dialog, dicom_node.pipeline.drafting, dicom_node.jobqueue.tasks"
    )
    assert [name for name in loaded if name.split(".")[0] == "training"] == []


#: The rooms of ``dicom_node/``, from the top floor down (docs/architecture.md). A room may
#: import the rooms below it, never one above; modules directly in ``dicom_node/``
#: (settings, errors, privacy, latency histograms) are the ground every room stands on.
ROOMS = ("cli", "ops", "api", "jobqueue", "retrain", "pipeline", "dicom", "models", "store")
GROUND = "(ground)"


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "dicom_node":
        return None
    if len(parts) > 1 and parts[1] in ROOMS:
        return parts[1]
    return GROUND


def _imports_of(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_rooms_of_the_node_import_only_the_rooms_below_them() -> None:
    rank = {room: i for i, room in enumerate(ROOMS)} | {GROUND: len(ROOMS)}
    upward = []
    for path in sorted((ROOT / "dicom_node").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module == "dicom_node.__main__":  # ``python -m dicom_node``: the command line
            continue
        source = _room(module)
        for name in _imports_of(path):
            target = _room(name)
            if target is None or target == source or name == "dicom_node":
                continue
            if rank[target] <= rank[source]:
                upward.append(f"{module} -> {name}")
    assert upward == []
