"""The committed lock files cover pyproject.toml, and the installed packages are the locked ones."""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCKS = ROOT / "deploy" / "locks"
#: Lock file -> extras it was compiled with.
EXTRAS = {"cpu.txt": ("cpu",), "cpu-dev.txt": ("cpu", "dev"), "gpu.txt": ("gpu",)}


def _pins(lock: Path) -> dict[str, str]:
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _requirements(extras: tuple[str, ...]) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


@pytest.mark.parametrize("lock_name", sorted(EXTRAS))
def test_every_dependency_is_pinned_within_its_range(lock_name: str) -> None:
    pins = _pins(LOCKS / lock_name)
    assert "torch" not in pins  # installed first, from the CPU wheel or a CUDA build
    assert not [name for name in pins if name.startswith("nvidia-")]
    for requirement in _requirements(EXTRAS[lock_name]):
        name = canonicalize_name(requirement.name)
        if name == "torch":
            continue
        assert name in pins, f"{requirement.name} is not in {lock_name}: refresh the locks"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"{lock_name} pins {requirement.name}=={pins[name]}, outside {requirement.specifier}"
        )


def test_the_test_environment_is_the_locked_one() -> None:
    mismatched = []
    for name, pinned in _pins(LOCKS / "cpu-dev.txt").items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            mismatched.append(f"{name} (locked {pinned}, not installed)")
            continue
        if Version(installed) != Version(pinned):
            mismatched.append(f"{name} (locked {pinned}, installed {installed})")
    assert not mismatched, "install through deploy/locks/cpu-dev.txt: " + ", ".join(mismatched)
