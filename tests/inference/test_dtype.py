"""Which dtype the LLM runs in: named dtypes as given, ``auto`` by device and CPU probe."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from inference import ChestXrayVLM, InferenceError, RuntimeOptions
from inference import llm as llm_module
from inference.llm import CPU_BF16_MAX_RATIO, cpu_bf16_time_ratio, resolve_dtype

CPU = torch.device("cpu")


def test_named_dtypes_pass_through_and_unknown_names_are_refused() -> None:
    assert resolve_dtype("float32", CPU) is torch.float32
    assert resolve_dtype("bfloat16", CPU) is torch.bfloat16
    with pytest.raises(InferenceError, match="unknown dtype 'int4'"):
        resolve_dtype("int4", CPU)


def test_small_models_stay_float32_on_cpu_without_probing() -> None:
    # matrices that fit in a cache: a decoding step is call overhead, bf16 buys nothing
    assert cpu_bf16_time_ratio(32, 64) == float("inf")
    assert resolve_dtype("auto", CPU, (32, 64)) is torch.float32
    assert resolve_dtype("auto", CPU) is torch.float32  # no model shape: nothing to probe


def test_auto_follows_the_probe_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for ratio, expected in ((0.5, torch.bfloat16), (CPU_BF16_MAX_RATIO, torch.bfloat16),
                            (1.08, torch.float32), (float("inf"), torch.float32)):
        monkeypatch.setattr(llm_module, "cpu_bf16_time_ratio", lambda i, o, r=ratio: r)
        assert resolve_dtype("auto", CPU, (576, 1536)) is expected


def test_probe_is_a_positive_time_ratio_on_this_cpu() -> None:
    ratio = cpu_bf16_time_ratio(576, 1536)
    if not torch.cpu._is_avx512_bf16_supported():
        assert ratio == float("inf")
    else:
        assert 0 < ratio < float("inf")
    assert cpu_bf16_time_ratio(576, 1536) == ratio  # probed once per process


def test_a_bfloat16_llm_drafts_a_report_on_cpu(tiny_bundle: Path, chest_cr_path: Path) -> None:
    model = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu", dtype="bfloat16"))
    assert model.llm.dtype == torch.bfloat16
    draft = model.generate_report([chest_cr_path], "Cough.")
    assert draft.text.strip()
    # the tiny test model is small enough to stay float32 under auto on any CPU
    auto = ChestXrayVLM.from_bundle(tiny_bundle, RuntimeOptions(device="cpu"))
    assert auto.llm.dtype == torch.float32


def test_the_node_logs_the_llm_dtype_and_decoding(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from dicom_node.models import model_cache
    from dicom_node.settings import InferenceSettings

    model_cache.forget_models()
    try:
        with caplog.at_level(logging.INFO, logger="dicom_node.models.model_cache"):
            model_cache.get_model(InferenceSettings(bundle=tiny_bundle, device="cpu"))
        assert "(LLM float32 on cpu, lookup decoding with 8 proposed tokens)" in caplog.text
    finally:
        model_cache.forget_models()
