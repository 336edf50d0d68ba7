"""The dicom_node command line: model init/verify/info, infer, config check."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_node.cli import app

runner = CliRunner()


def test_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dicom_node", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0
    for command in ("model", "infer", "config"):
        assert command in result.stdout
    assert shutil.which("dicom_node"), "the 'dicom_node' console script is not on PATH"


def test_model_init_tiny_builds_a_verifiable_bundle(tmp_path: Path) -> None:
    out = tmp_path / "mlp"
    result = runner.invoke(app, ["model", "init", "--tiny", "--aligner", "mlp", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "manifest.json").is_file() and (out / "vision.onnx").is_file()
    info = runner.invoke(app, ["model", "info", str(out)])
    assert info.exit_code == 0 and json.loads(info.stdout)["aligner"] == "mlp"
    assert json.loads(info.stdout)["provenance"]["licence"] == "none: random weights"


def test_model_init_refuses_an_existing_directory(tiny_bundle: Path) -> None:
    result = runner.invoke(app, ["model", "init", "--tiny", "--out", str(tiny_bundle)])
    assert result.exit_code == 2 and "already exists" in result.output


def test_model_verify_prints_the_difference_and_passes(tiny_bundle: Path) -> None:
    result = runner.invoke(app, ["model", "verify", str(tiny_bundle)])
    assert result.exit_code == 0, result.output
    assert "max abs diff:" in result.output
    assert "int8 model vs torch" in result.output


def test_model_verify_gates_the_int8_drift(tiny_bundle: Path) -> None:
    result = runner.invoke(app, ["model", "verify", str(tiny_bundle), "--int8-atol", "1e-9"])
    assert result.exit_code == 1 and "int8 probabilities differ" in result.output


def test_model_verify_fails_above_tolerance(tiny_bundle: Path) -> None:
    result = runner.invoke(app, ["model", "verify", str(tiny_bundle), "--atol", "1e-12"])
    assert result.exit_code == 1 and "differ by" in result.output


def test_model_verify_names_a_tampered_file(tiny_bundle: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    with (copy / "vision.onnx").open("ab") as handle:
        handle.write(b"\0")
    result = runner.invoke(app, ["model", "verify", str(copy)])
    assert result.exit_code == 2
    assert "vision.onnx" in result.output and "checksum mismatch" in result.output


def test_infer_json_on_a_real_chest_cr(tiny_bundle: Path, chest_cr_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "infer",
            "--model",
            str(tiny_bundle),
            str(chest_cr_path),
            "--indication",
            "Cough.",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert len(payload["findings"]) == 14 and payload["indication"] == "Cough."
    assert isinstance(payload["report"], str) and payload["images"] == 1
    assert "PatientName" not in result.stdout


def test_infer_reads_a_folder_and_skips_non_dicom_files(
    tiny_bundle: Path, chest_cr_path: Path, tmp_path: Path
) -> None:
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(chest_cr_path, study / "image1")
    (study / "README.txt").write_text("not DICOM")
    result = runner.invoke(app, ["infer", "--model", str(tiny_bundle), str(study)])
    assert result.exit_code == 0, result.output
    assert "Pleural Effusion" in result.output and "Report" in result.output


def test_infer_refuses_an_explicit_non_dicom_file(tiny_bundle: Path, tmp_path: Path) -> None:
    junk = tmp_path / "x.dcm"
    junk.write_bytes(b"\0" * 10)
    result = runner.invoke(app, ["infer", "--model", str(tiny_bundle), str(junk)])
    assert result.exit_code == 2 and "not a readable DICOM file" in result.output


def test_infer_without_bundle_says_how_to_make_one(tmp_path: Path) -> None:
    result = runner.invoke(app, ["infer", "--model", str(tmp_path / "none")])
    assert result.exit_code == 2 and "model init --tiny" in result.output


def test_config_check_names_a_bad_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.toml"
    config.write_text("[inference]\nort_intra_op_threads = -2\n")
    result = runner.invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2 and "inference.ort_intra_op_threads" in result.output
    config.write_text("[inference]\nbundel = 'models/x'\n")
    result = runner.invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2 and "inference.bundel" in result.output


def test_settings_precedence_file_env_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicom_node import load_settings

    config = tmp_path / "node.toml"
    config.write_text(
        "[inference]\ndevice = 'cuda'\nbundle = 'from-file'\nort_intra_op_threads = 3\n"
    )
    monkeypatch.setenv("DICOM_NODE_INFERENCE__DEVICE", "cpu")
    settings = load_settings(config, inference={"bundle": Path("from-flag"), "dtype": None})
    assert settings.inference.device == "cpu"  # env beats file
    assert settings.inference.bundle == Path("from-flag")  # flag beats everything
    assert settings.inference.ort_intra_op_threads == 3  # file beats default
    assert settings.inference.dtype == "auto"  # an unset flag masks nothing
