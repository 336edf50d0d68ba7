"""CUDA paths (run where a GPU is present; skipped elsewhere, e.g. in CI)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference import ChestXrayVLM, OrtOptions, RuntimeOptions, verify_vision_parity

pytestmark = pytest.mark.gpu


def test_cuda_execution_provider_matches_torch(tiny_bundle: Path) -> None:
    ort_options = OrtOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    result = verify_vision_parity(tiny_bundle, ort_options=ort_options)
    assert result.providers[0] == "CUDAExecutionProvider"
    assert result.max_abs_diff < 1e-3


def test_llm_runs_on_cuda_in_bfloat16(tiny_bundle: Path, chest_cr_path: Path) -> None:
    import torch

    model = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cuda", dtype="auto"))
    assert model.llm.device.type == "cuda" and model.llm.dtype == torch.bfloat16
    draft = model.generate_report([chest_cr_path], "Cough.")
    assert isinstance(draft.text, str) and len(draft.findings) == 14


def test_image_tokens_stay_on_the_gpu_from_onnx_runtime_to_the_llm(
    tiny_bundle: Path, chest_cr_path: Path
) -> None:
    options = RuntimeOptions(
        device="cuda", ort=OrtOptions(providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    )
    model = ChestXrayVLM.from_bundle(tiny_bundle, options)
    analysis = model.analyse([chest_cr_path])
    assert analysis.image_tokens.device.type == "cuda"
    cpu = ChestXrayVLM.from_bundle(tiny_bundle).analyse([chest_cr_path])
    assert (analysis.image_tokens.cpu() - cpu.image_tokens).abs().max() < 1e-3
