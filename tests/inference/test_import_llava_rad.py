"""``dicom_node model import llava-rad``: a tiny LLaVA-Rad download (open_clip timm ViT
checkpoint, LoRA over Vicuna v1.5, ``non_lora_trainables.bin``) becomes a bundle whose image
tokens and greedy text match a plain-torch reference of LLaVA-Rad's forward pass (its
``VisionTower`` hidden state -2 without the CLS token, ``mlp2x_gelu``, the LoRA merged)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from support.published.llava_rad import (
    BASE_DIR,
    CLIP_CHECKPOINT,
    CLIP_CONFIG,
    HEADS,
    REPO_DIR,
    write_llava_rad,
)
from support.published.reference import greedy, timm_vit_states
from transformers import AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, StudyRequest, load_manifest
from inference.importers import import_llava_rad
from inference.importers.llava_rad import DEFAULT_INSTRUCTION, SYSTEM
from inference.preprocessing import load_images

runner = CliRunner()


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llava_rad(tmp_path_factory.mktemp("llava-rad"))


@pytest.fixture(scope="module")
def bundle(download: Path) -> Path:
    return import_llava_rad(download / REPO_DIR, download / "bundle", llm=download / BASE_DIR)


def _reference(download: Path, pixels: torch.Tensor, steps: int) -> tuple[np.ndarray, str]:
    repo = download / REPO_DIR
    checkpoint = torch.load(repo / CLIP_CHECKPOINT, weights_only=True)["state_dict"]
    trunk = {k.removeprefix("module.visual.trunk."): v.float() for k, v in checkpoint.items()
             if k.startswith("module.visual.trunk.")}
    features = timm_vit_states(trunk, pixels, HEADS)[-2][:, 1:]  # select layer -2, 'patch'
    raw = torch.load(repo / "non_lora_trainables.bin", weights_only=True)
    state = {k.removeprefix("base_model.").removeprefix("model."): v.float()
             for k, v in raw.items()}
    hidden = F.gelu(F.linear(features, state["model.mm_projector.0.weight"],
                             state["model.mm_projector.0.bias"]))
    image = F.linear(hidden, state["model.mm_projector.2.weight"],
                     state["model.mm_projector.2.bias"])[0]

    base = download / BASE_DIR
    model = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    adapter = torch.load(repo / "adapter_model.bin", weights_only=True)
    lora = json.loads((repo / "adapter_config.json").read_text())
    with torch.no_grad():  # builder.py: PeftModel.from_pretrained(...).merge_and_unload()
        for name, module in model.named_modules():
            key = f"base_model.model.{name}.lora_A.weight"
            if key in adapter:
                delta = adapter[key.replace("lora_A", "lora_B")].float() @ adapter[key].float()
                module.weight += lora["lora_alpha"] / lora["r"] * delta
    model.eval()
    # conv_vicuna_v1 with "<image>\n" + query; tokenizer_image_token: one BOS, each side alone
    sp = spm.SentencePieceProcessor(model_file=str(base / "tokenizer.model"))
    before = f"{SYSTEM} USER: "
    after = f"\n{DEFAULT_INSTRUCTION} ASSISTANT:"
    embed = model.get_input_embeddings()
    with torch.no_grad():
        inputs = torch.cat([embed(torch.tensor([sp.bos_id(), *sp.encode(before)])), image,
                            embed(torch.tensor(sp.encode(after)))])[None]
    ids = greedy(model, inputs, steps, sp.eos_id())
    text = AutoTokenizer.from_pretrained(str(base)).decode(ids, skip_special_tokens=True)
    return image.detach().numpy(), text.strip()


def test_the_bundle_reads_the_timm_tower_and_keeps_vicuna_where_it_is(
    download: Path, bundle: Path
) -> None:
    manifest = load_manifest(bundle)
    config = manifest.config
    assert config.vision.backbone["model_type"] == "vit"
    assert config.vision.backbone["num_hidden_layers"] == 2  # 3 blocks, select layer -2
    assert config.vision.backbone["num_attention_heads"] == HEADS  # from the timm name
    assert config.vision.feature_layer == -1 and config.vision.skip_tokens == 1
    assert manifest.llm_base == (download / BASE_DIR).resolve()
    assert list(manifest.adapters) == ["instruct"]
    assert "Microsoft Research License" in (manifest.provenance.licence if manifest.provenance
                                            else "")
    result = runner.invoke(app, ["model", "verify", str(bundle)])
    assert result.exit_code == 0, result.output
    drafted = runner.invoke(app, ["infer", "-m", str(bundle), "--json", "--no-stream"])
    assert drafted.exit_code == 0, drafted.output


def test_image_tokens_and_greedy_text_match_the_reference(download: Path, bundle: Path) -> None:
    model = ChestXrayVLM.from_bundle(bundle)
    datasets = read_study([sample_study()])
    pixels = load_images(datasets, model.config.preprocess)
    steps = model.config.generation.max_new_tokens
    expected_tokens, expected_text = _reference(download, torch.from_numpy(pixels), steps)
    _, tokens = model.vision(pixels)
    np.testing.assert_allclose(tokens[0], expected_tokens, atol=1e-4)
    (draft,) = model.generate_reports([StudyRequest(model.analyse(datasets))])
    assert expected_text and draft.text == expected_text


def test_what_the_importer_cannot_run_is_named_and_leaves_nothing(
    download: Path, tmp_path: Path
) -> None:
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(download / REPO_DIR, target)
        return target

    unknown = copy("unknown-tower")
    clip = json.loads((unknown / CLIP_CONFIG).read_text())
    clip["vision_cfg"]["timm_model_name"] = "eva02_large_patch14_448"
    (unknown / CLIP_CONFIG).write_text(json.dumps(clip))
    start_end = copy("start-end")
    config = json.loads((start_end / "config.json").read_text())
    (start_end / "config.json").write_text(json.dumps({**config, "mm_use_im_start_end": True}))
    for source, words in ((unknown, ("biomedclipcxr_518.json", "eva02_large_patch14_448")),
                          (start_end, ("config.json", "mm_use_im_start_end"))):
        result = runner.invoke(app, ["model", "import", "llava-rad", str(source), "--out",
                                     str(tmp_path / "b"), "--llm", str(download / BASE_DIR)])
        assert result.exit_code != 0
        assert all(word in result.output for word in words), result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["start-end", "unknown-tower"]
