"""The DICOM validators every SR a test keeps goes through: dciodvfy and dsrdump."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

_TOOL_PACKAGES = {"dciodvfy": "dicom3tools", "dsrdump": "dcmtk"}


def validate_sr_file(path: Path) -> str:
    """Run dciodvfy and dsrdump on an SR file; returns dsrdump's output.

    Raises ``AssertionError`` naming the output when either reports an error, and
    ``RuntimeError`` naming the package when a tool is missing.
    """
    tools = {}
    for name, package in _TOOL_PACKAGES.items():
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"{name} is not installed; apt-get install {package}")
        tools[name] = found
    dciodvfy = subprocess.run(
        [tools["dciodvfy"], str(path)], capture_output=True, text=True, errors="replace",
        timeout=60,
    )
    output = dciodvfy.stdout + dciodvfy.stderr
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert dciodvfy.returncode == 0 and not errors, output
    dsrdump = subprocess.run(
        [tools["dsrdump"], "+Pc", str(path)], capture_output=True, text=True, errors="replace",
        timeout=60,
    )
    dump = dsrdump.stdout + dsrdump.stderr
    assert dsrdump.returncode == 0, dump
    assert not [line for line in dump.splitlines() if line.startswith(("E:", "F:"))], dump
    return dump
