"""Model bundle: manifest contents, integrity checks, runtime choice."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inference import (
    BundleError,
    BundleIntegrityError,
    ChestXrayVLM,
    OrtOptions,
    RuntimeOptions,
    build_tiny_bundle,
    load_manifest,
    verify_vision_parity,
)
from inference.model import TorchVisionRunner, select_vision_onnx
from report_language import CHEXPERT_LABELS


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "copy"))


def test_manifest_describes_the_bundle(tiny_bundle: Path) -> None:
    raw = json.loads((tiny_bundle / "manifest.json").read_text())
    assert raw["format_version"] == 1
    assert set(raw["thresholds"]) == set(CHEXPERT_LABELS)
    assert {"torch", "transformers", "peft", "onnxruntime"} <= set(raw["versions"])
    assert raw["created"] and raw["config"]["aligner"]["kind"] == "qformer"
    files = raw["files"]
    assert "vision.onnx" in files and "vision.safetensors" in files
    assert any(f.startswith("tokenizer/") for f in files)
    assert any(f.startswith("llm/") for f in files)
    assert {
        "adapters/report/adapter_model.safetensors",
        "adapters/instruct/adapter_model.safetensors",
    } <= set(files)
    assert all(len(digest) == 64 for digest in files.values())


@pytest.mark.parametrize(
    "victim",
    [
        "vision.onnx",
        "vision.safetensors",
        "llm/model.safetensors",
        "adapters/report/adapter_config.json",
    ],
)
def test_tampered_file_is_detected_and_named(bundle_copy: Path, victim: str) -> None:
    path = bundle_copy / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match=victim.replace("/", ".")):
        load_manifest(bundle_copy)
    with pytest.raises(BundleIntegrityError, match="checksum mismatch"):
        ChestXrayVLM.from_bundle(bundle_copy)


def test_missing_and_unlisted_files_are_detected(bundle_copy: Path) -> None:
    (bundle_copy / "tokenizer" / "extra_tokens.json").write_text("{}")
    with pytest.raises(BundleIntegrityError, match="extra_tokens.json.*not listed"):
        load_manifest(bundle_copy)
    (bundle_copy / "tokenizer" / "extra_tokens.json").unlink()
    (bundle_copy / "vision.onnx").unlink()
    with pytest.raises(BundleError, match="vision.onnx.*missing"):
        load_manifest(bundle_copy)


def test_unsupported_format_version_is_refused(bundle_copy: Path) -> None:
    manifest = bundle_copy / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["format_version"] = 99
    manifest.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="format version 99"):
        load_manifest(bundle_copy)


def test_bad_config_in_manifest_names_the_key(bundle_copy: Path) -> None:
    manifest = bundle_copy / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["config"]["aligner"]["kind"] = "perceiver"
    manifest.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="aligner.kind"):
        load_manifest(bundle_copy)


def test_provenance_is_in_the_manifest_and_a_bad_one_names_the_key(
    tiny_bundle: Path, bundle_copy: Path
) -> None:
    provenance = load_manifest(tiny_bundle).provenance
    assert provenance is not None
    assert provenance.intended_use == "Software tests only; its reports mean nothing."
    assert provenance.licence == "none: random weights"
    manifest = bundle_copy / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["provenance"]["license"] = raw["provenance"].pop("licence")
    manifest.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="provenance.*license"):
        load_manifest(bundle_copy)
    # A bundle from before provenance was kept still loads, without one.
    raw["provenance"] = None
    manifest.write_text(json.dumps(raw))
    assert load_manifest(bundle_copy).provenance is None


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no manifest"):
        load_manifest(tmp_path)


def test_torch_and_onnx_paths_agree_on_the_bundle(tiny_bundle: Path) -> None:
    result = verify_vision_parity(tiny_bundle, batch_size=2)
    assert result.max_abs_diff < 1e-4
    assert "CPUExecutionProvider" in result.providers


def test_torch_vision_backend_gives_the_same_report(
    tiny_bundle: Path, chest_cr_path: Path
) -> None:
    torch_model = ChestXrayVLM.from_bundle(
        tiny_bundle, RuntimeOptions(vision_backend="torch", device="cpu")
    )
    assert isinstance(torch_model.vision, TorchVisionRunner)
    fp32_model = ChestXrayVLM.from_bundle(
        tiny_bundle, RuntimeOptions(vision_precision="fp32", device="cpu")
    )
    onnx_draft = fp32_model.generate_report([chest_cr_path], "Cough.")
    torch_draft = torch_model.generate_report([chest_cr_path], "Cough.")
    assert onnx_draft.text == torch_draft.text
    for a, b in zip(onnx_draft.findings, torch_draft.findings, strict=True):
        assert a.label == b.label and abs(a.probability - b.probability) < 1e-4


def test_bundle_ships_an_int8_vision_model_close_to_torch(tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    assert manifest.vision_onnx_int8 == tiny_bundle / "vision.int8.onnx"
    assert "vision.int8.onnx" in manifest.files
    # The int8 file is smaller and really quantised: it differs from torch, but little.
    assert manifest.vision_onnx_int8.stat().st_size < manifest.vision_onnx.stat().st_size
    result = verify_vision_parity(tiny_bundle, batch_size=2, precision="int8")
    assert 0 < result.max_abs_diff_probabilities < 0.02
    assert result.precision == "int8"


def test_precision_setting_chooses_the_onnx_file(tiny_bundle: Path) -> None:
    manifest = load_manifest(tiny_bundle)
    cpu = OrtOptions(providers=("CPUExecutionProvider",))
    assert select_vision_onnx(manifest, "auto", cpu) == manifest.vision_onnx_int8
    assert select_vision_onnx(manifest, "fp32", cpu) == manifest.vision_onnx
    assert select_vision_onnx(manifest, "int8", cpu) == manifest.vision_onnx_int8


def test_int8_precision_without_an_int8_model_is_refused(tmp_path: Path) -> None:
    bundle = build_tiny_bundle(tmp_path / "b", int8=False)
    manifest = load_manifest(bundle)
    assert manifest.vision_onnx_int8 is None
    cpu = OrtOptions(providers=("CPUExecutionProvider",))
    assert select_vision_onnx(manifest, "auto", cpu) == manifest.vision_onnx
    with pytest.raises(BundleError, match="no int8 vision model"):
        ChestXrayVLM.from_bundle(bundle, RuntimeOptions(vision_precision="int8", device="cpu"))
