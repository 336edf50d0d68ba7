"""Every command module of the CLI can be imported first, in a fresh interpreter: no circles."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = ["dicom_node.cli.node", "dicom_node.cli.amend", "dicom_node.cli.registry",
           "dicom_node.cli.training", "dicom_node.cli.model", "dicom_node.cli"]


@pytest.mark.parametrize("module", MODULES)
def test_a_command_module_imports_first(module: str) -> None:
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
