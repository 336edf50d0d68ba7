"""Fixtures for the sr_templates tests: source images, reports and the DICOM validators.

Every SR a test writes goes through :func:`validated` (the ``validate_sr`` fixture), which saves
it and runs the real validators on the file: ``dciodvfy`` (dicom3tools) must report no error
and ``dsrdump``/``dsr2xml`` (DCMTK) must parse it. The validators are not optional: when one is
not installed the test fails and says which package to install (``.ci/run`` installs both).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from sr_templates import CHEXPERT_LABELS, AlgorithmInfo, Finding, Presence, Report

_TOOL_PACKAGES = {"dciodvfy": "dicom3tools", "dsrdump": "dcmtk", "dsr2xml": "dcmtk"}


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed; install the Debian package {_TOOL_PACKAGES[name]} "
            f"(apt-get install {_TOOL_PACKAGES[name]}); the SR tests validate every SR with it",
            pytrace=False,
        )
    return path


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of running the DICOM validators on one file."""

    dciodvfy_returncode: int
    dciodvfy_errors: list[str]
    dciodvfy_output: str
    dsrdump_returncode: int
    dsrdump_errors: list[str]
    dsrdump_output: str
    dsr2xml_returncode: int

    @property
    def ok(self) -> bool:
        return (
            self.dciodvfy_returncode == 0
            and not self.dciodvfy_errors
            and self.dsrdump_returncode == 0
            and not self.dsrdump_errors
            and self.dsr2xml_returncode == 0
        )


def run_validators(path: Path) -> ValidationResult:
    """Run dciodvfy, dsrdump and dsr2xml on an SR file."""
    dciodvfy = subprocess.run(
        [_tool("dciodvfy"), str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    # dciodvfy writes its findings to stderr; "Error - ..." lines are IOD violations.
    dciodvfy_output = dciodvfy.stdout + dciodvfy.stderr
    dsrdump = subprocess.run(
        [_tool("dsrdump"), "+Pc", str(path)],
        capture_output=True,
        text=True,
        errors="replace",
        timeout=60,
        check=False,
    )
    dsrdump_output = dsrdump.stdout + dsrdump.stderr
    dsr2xml = subprocess.run(
        [_tool("dsr2xml"), "+Xn", str(path)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return ValidationResult(
        dciodvfy_returncode=dciodvfy.returncode,
        dciodvfy_errors=[line for line in dciodvfy_output.splitlines() if line.startswith("Error")],
        dciodvfy_output=dciodvfy_output,
        dsrdump_returncode=dsrdump.returncode,
        dsrdump_errors=[
            line for line in dsrdump_output.splitlines() if line.startswith(("E:", "F:"))
        ],
        dsrdump_output=dsrdump_output,
        dsr2xml_returncode=dsr2xml.returncode,
    )


@pytest.fixture(scope="session")
def dicom_validators() -> Callable[[Path], ValidationResult]:
    """The validator runner itself, for tests that check it rejects bad files."""
    return run_validators


@pytest.fixture
def validate_sr(tmp_path: Path) -> Callable[[Dataset, str], Path]:
    """Save an SR to ``tmp_path/<name>.dcm``, validate it and return the path."""

    def validated(sr: Dataset, name: str) -> Path:
        path = tmp_path / f"{name}.dcm"
        sr.save_as(path, enforce_file_format=True)
        result = run_validators(path)
        assert result.dciodvfy_errors == [], result.dciodvfy_output
        assert result.dciodvfy_returncode == 0, result.dciodvfy_output
        assert result.dsrdump_returncode == 0, result.dsrdump_output
        assert result.dsrdump_errors == [], result.dsrdump_output
        assert result.dsr2xml_returncode == 0
        return path

    return validated


@pytest.fixture(scope="session")
def _cr_header() -> Dataset:
    # The real chest CR of pydicom-data, without pixels: the SR needs only the header.
    return pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm"), stop_before_pixels=True)


@pytest.fixture
def cr_source(_cr_header: Dataset) -> Dataset:
    """A chest PA computed radiograph (header only), safe to modify."""
    return copy.deepcopy(_cr_header)


def derived_source(source: Dataset, sop_class_uid: str) -> Dataset:
    """A copy of `source` as a new instance of `sop_class_uid` in a new series."""
    derived = copy.deepcopy(source)
    derived.SOPClassUID = sop_class_uid
    derived.SOPInstanceUID = generate_uid()
    derived.SeriesInstanceUID = generate_uid()
    derived.file_meta.MediaStorageSOPClassUID = sop_class_uid
    derived.file_meta.MediaStorageSOPInstanceUID = derived.SOPInstanceUID
    return derived


@pytest.fixture(scope="session")
def derive_source() -> Callable[[Dataset, str], Dataset]:
    """Factory: ``derive_source(image, sop_class_uid)`` copies an image as a new instance."""
    return derived_source


@pytest.fixture
def sc_source(cr_source: Dataset) -> Dataset:
    """A secondary capture of the same study (synthetic copy of the CR)."""
    return derived_source(cr_source, SecondaryCaptureImageStorage)


@pytest.fixture
def dx_source(cr_source: Dataset) -> Dataset:
    """A digital radiograph of the same study (synthetic copy of the CR)."""
    return derived_source(cr_source, DigitalXRayImageStorageForPresentation)


@pytest.fixture(scope="session")
def algorithm() -> AlgorithmInfo:
    return AlgorithmInfo(
        name="cxr-vlm",
        version="2.1.0+g1a2b3c4",
        parameters={"max_new_tokens": "256", "temperature": "0.0", "threshold": "0.5"},
        manufacturer="Example Imaging AI",
    )


def all_findings(present: frozenset[str] = frozenset({"Pleural Effusion"})) -> tuple[Finding, ...]:
    """One finding per CheXpert label, with distinct probabilities."""
    return tuple(
        Finding(
            label=label,
            presence=Presence.PRESENT if label in present else Presence.ABSENT,
            probability=0.9 - index * 0.05 if label in present else 0.013 * (index + 1),
        )
        for index, label in enumerate(CHEXPERT_LABELS)
    )


@pytest.fixture(scope="session")
def make_findings() -> Callable[..., tuple[Finding, ...]]:
    """Factory of a complete set of findings: ``make_findings(present=frozenset({...}))``."""
    return all_findings


@pytest.fixture(scope="session")
def draft_report() -> Report:
    return Report(
        findings_text=(
            "Small left pleural effusion with adjacent basal opacity.\n"
            "No pneumothorax. Heart size within normal limits."
        ),
        impression_text="Small left pleural effusion.",
        indication="Cough and fever for three days.",
        findings=all_findings(),
        language="en",
    )
