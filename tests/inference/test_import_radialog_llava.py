"""``dicom_node model import radialog-llava``: a tiny RaDialog-LLaVA download (bf16 pickles as
on the hub) on a tiny LLaVA-1.5 base in the original LLaVA layout becomes a bundle whose
image tokens, findings and greedy text match a plain-torch reference of RaDialog-LLaVA's
forward pass (BatchNorm in eval mode, as the bundle decides; see docs/models.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from support.published.radialog import RADIALOG_LABELS
from support.published.radialog_llava import (
    BASE_DIR,
    CLASSIFIER_V2,
    REPO_DIR,
    write_radialog_llava,
)
from support.published.reference import biovil, biovil_patches, crop, greedy
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, StudyRequest, load_manifest
from inference.importers import import_radialog_llava
from inference.importers.radialog import REPORT_INSTRUCTION, SYSTEM
from inference.preprocessing import load_images

runner = CliRunner()


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_radialog_llava(tmp_path_factory.mktemp("radialog-llava"))


@pytest.fixture(scope="module")
def bundle(download: Path) -> Path:
    return import_radialog_llava(download / REPO_DIR, download / "bundle",
                                 llm=download / BASE_DIR)


def _reference(download: Path, pixels: torch.Tensor, steps: int) -> tuple[np.ndarray, str, str]:
    repo = download / REPO_DIR
    raw = torch.load(repo / "non_lora_trainables.bin", weights_only=True)
    # builder.py: strip 'base_model.', then one 'model.' of 'model.model.'
    state = {k.removeprefix("base_model.").removeprefix("model."): v.float()
             for k, v in raw.items()}
    tower = {k.removeprefix("model.vision_tower."): v for k, v in state.items()
             if k.startswith("model.vision_tower.")}
    patches = biovil_patches(tower, crop(pixels, 448))  # [1, 512, 14, 14]
    features = patches.flatten(2).transpose(1, 2)  # encode_images: proper patch order
    hidden = F.gelu(F.linear(features, state["model.mm_projector.0.weight"],
                             state["model.mm_projector.0.bias"]))
    image = F.linear(hidden, state["model.mm_projector.2.weight"],
                     state["model.mm_projector.2.bias"])[0]

    c = {k.removeprefix("model.biovil_encoder."): v for k, v in
         torch.load(repo / CLASSIFIER_V2, weights_only=True)["state_dict"].items()}
    grid = F.avg_pool2d(biovil(c, crop(pixels, 488)), 4).view(1, -1)
    probabilities = torch.sigmoid(F.linear(
        F.relu(F.linear(grid, c["model.fc1.weight"], c["model.fc1.bias"])),
        c["model.fc2.weight"], c["model.fc2.bias"]))[0]
    names = [n for n, p in zip(RADIALOG_LABELS, probabilities, strict=True) if p > 0.5]
    if "No Finding" in names and any(n not in ("No Finding", "Support Devices") for n in names):
        names.remove("No Finding")
    findings = ", ".join(names).lower().strip() or "no common findings"

    # The LLaMA of the base, LoRA merged as builder.py's merge_and_unload does.
    base = download / BASE_DIR
    config = json.loads((base / "config.json").read_text())
    llama = LlamaConfig(**{k: v for k, v in config.items() if not k.startswith("mm_")
                           and k not in ("model_type", "architectures")})
    model = LlamaForCausalLM(llama)
    shards = {}
    for shard in sorted(base.glob("pytorch_model-*.bin")):
        shards |= torch.load(shard, weights_only=True)
    model.load_state_dict({k: v.float() for k, v in shards.items()
                           if not k.startswith("model.mm_projector.")})
    adapter = torch.load(repo / "adapter_model.bin", weights_only=True)
    lora = json.loads((repo / "adapter_config.json").read_text())
    with torch.no_grad():
        for name, module in model.named_modules():
            key = f"base_model.model.{name}.lora_A.weight"
            if key in adapter:
                delta = adapter[key.replace("lora_A", "lora_B")].float() @ adapter[key].float()
                module.weight += lora["lora_alpha"] / lora["r"] * delta
    model.eval()
    # tokenizer_image_token: each side of <image> tokenized on its own, one BOS.
    sp = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
    before = f"{SYSTEM} USER: "
    after = f". Predicted Findings: {findings}. {REPORT_INSTRUCTION} ASSISTANT:"
    embed = model.get_input_embeddings()
    with torch.no_grad():
        inputs = torch.cat([embed(torch.tensor([sp.bos_id(), *sp.encode(before)])), image,
                            embed(torch.tensor(sp.encode(after)))])[None]
    ids = greedy(model, inputs, steps, sp.eos_id())
    text = AutoTokenizer.from_pretrained(str(base)).decode(ids, skip_special_tokens=True)
    return image.detach().numpy(), findings, text.strip()


def test_the_bundle_reads_the_fine_tuned_tower_and_keeps_the_base_where_it_is(
    download: Path, bundle: Path
) -> None:
    manifest = load_manifest(bundle)
    config = manifest.config
    assert config.vision.kind == "biovil_t" and config.vision.tokens == "patches"
    assert config.aligner.kind == "mlp" and config.classifier.labels == RADIALOG_LABELS
    assert manifest.llm_base == (download / BASE_DIR).resolve()
    llm_config = json.loads((bundle / "llm_config" / "config.json").read_text())
    assert llm_config["model_type"] == "llama"
    assert not any(key.startswith("mm_") for key in llm_config)
    result = runner.invoke(app, ["model", "verify", str(bundle)])
    assert result.exit_code == 0, result.output
    drafted = runner.invoke(app, ["infer", "-m", str(bundle), "--json", "--no-stream"])
    assert drafted.exit_code == 0, drafted.output
    payload = json.loads(drafted.stdout[drafted.stdout.index("{"):])
    assert payload["model"]["name"] == "radialog-v2" and len(payload["findings"]) == 14


def test_image_tokens_findings_and_greedy_text_match_the_reference(
    download: Path, bundle: Path
) -> None:
    model = ChestXrayVLM.from_bundle(bundle)
    datasets = read_study([sample_study()])
    pixels = load_images(datasets, model.config.preprocess)
    steps = model.config.generation.max_new_tokens
    expected_tokens, findings, expected_text = _reference(download, torch.from_numpy(pixels),
                                                          steps)
    _, tokens = model.vision(pixels)
    np.testing.assert_allclose(tokens[0], expected_tokens, atol=1e-4)
    analysis = model.analyse(datasets)
    listed = [f.label.lower() for f in analysis.findings if f.positive]
    assert all(name in findings for name in listed if name != "no finding")
    (draft,) = model.generate_reports([StudyRequest(analysis)])
    assert expected_text and draft.text == expected_text
    assert model.llm.merged_adapters == ["instruct"]


def test_a_base_that_does_not_fit_the_projector_is_named(download: Path, tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    config = json.loads((download / BASE_DIR / "config.json").read_text())
    (base / "config.json").write_text(json.dumps({**config, "hidden_size": 96}))
    result = runner.invoke(app, ["model", "import", "radialog-llava", str(download / REPO_DIR),
                                 "--out", str(tmp_path / "b"), "--llm", str(base)])
    assert result.exit_code != 0
    assert "non_lora_trainables.bin" in result.output and "mm_projector.2.weight" in result.output
    assert "96 wide" in result.output and not (tmp_path / "b").exists()
