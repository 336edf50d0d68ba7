"""``dicom_node model import xraygpt``: a tiny XrayGPT download (EVA ViT-g, BLIP-2 Q-Former,
``llama_proj``, a Vicuna folder with ``.bin`` shards) becomes a bundle whose image tokens and
greedy text match a plain-torch reference of MiniGPT-4's forward pass (LAVIS is not on PyPI
for this Python; the reference is in ``support/published/reference.py``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from support.published.reference import eva_vit, greedy, qformer
from support.published.xraygpt import (
    EVA_BLOCKS,
    EVA_FILE,
    QFORMER_FILE,
    STAGE2_FILE,
    VICUNA_DIR,
    write_xraygpt,
)
from transformers import AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, StudyRequest, load_manifest
from inference.importers import import_xraygpt
from inference.importers.xraygpt import REPORT_INSTRUCTION, SYSTEM
from inference.preprocessing import load_images

runner = CliRunner()


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_xraygpt(tmp_path_factory.mktemp("xraygpt") / "XrayGPT")


@pytest.fixture(scope="module")
def bundle(download: Path) -> Path:
    return import_xraygpt(download, download.parent / "bundle", llm=download / VICUNA_DIR)


def _reference_tokens(download: Path, pixels: torch.Tensor) -> torch.Tensor:
    """MiniGPT-4's ``encode_img``: EVA ViT (all blocks but the last), ln_vision, Q-Former,
    llama_proj."""
    eva = torch.load(download / EVA_FILE, weights_only=True)
    blip2 = torch.load(download / QFORMER_FILE, weights_only=True)["model"]
    stage2 = torch.load(download / STAGE2_FILE, weights_only=True)["model"]
    features = eva_vit(eva, pixels, blocks=EVA_BLOCKS - 1, heads=eva["cls_token"].shape[-1] // 88)
    features = F.layer_norm(features, features.shape[-1:], blip2["ln_vision.weight"],
                            blip2["ln_vision.bias"], eps=1e-5)
    queries = qformer(blip2, features, heads=blip2["query_tokens"].shape[-1] // 64)
    return F.linear(queries, stage2["llama_proj.weight"], stage2["llama_proj.bias"])[0]


def _reference_text(download: Path, image: torch.Tensor, steps: int) -> str:
    """XrayGPT's ``Chat``: the CONV_VISION prompt split at ``<ImageHere>``, each segment
    encoded on its own by its LLaMA tokenizer (here with sentencepiece itself; BOS on the first
    only), greedy, cut at ``###``."""
    sp = spm.SentencePieceProcessor(model_file=str(download / VICUNA_DIR / "tokenizer.model"))
    tokenizer = AutoTokenizer.from_pretrained(str(download / VICUNA_DIR))
    model = LlamaForCausalLM.from_pretrained(str(download / VICUNA_DIR)).eval()
    prompt = (f"{SYSTEM}###Patient: <Img><ImageHere></Img> {REPORT_INSTRUCTION}###Doctor:")
    before, after = prompt.split("<ImageHere>")
    embed = model.get_input_embeddings()
    with torch.no_grad():
        inputs = torch.cat([
            embed(torch.tensor([sp.bos_id(), *sp.encode(before)])),
            image,
            embed(torch.tensor(sp.encode(after))),
        ])[None]
    ids = greedy(model, inputs, steps, sp.eos_id(),
                 stop=lambda ids: "###" in tokenizer.decode(ids))
    return tokenizer.decode(ids, skip_special_tokens=True).split("###")[0].strip()


def test_the_bundle_follows_the_code_eva_vit_g_not_medclip(download: Path, bundle: Path) -> None:
    manifest = load_manifest(bundle)
    backbone = manifest.config.vision.backbone
    assert backbone["model_type"] == "blip_2_vision_model"
    assert backbone["num_hidden_layers"] == EVA_BLOCKS - 1  # BLIP-2 reads the penultimate
    assert backbone["num_attention_heads"] == 2 and backbone["image_size"] == 28
    assert manifest.config.classifier.kind == "none"
    assert manifest.config.generation.stop_strings == ("###",)
    assert manifest.llm_base == (download / VICUNA_DIR).resolve()
    assert "XrayGPT" in manifest.provenance.source  # type: ignore[union-attr]
    result = runner.invoke(app, ["model", "verify", str(bundle)])
    assert result.exit_code == 0, result.output
    drafted = runner.invoke(app, ["infer", "-m", str(bundle), "--json", "--no-stream"])
    assert drafted.exit_code == 0, drafted.output
    payload = json.loads(drafted.stdout[drafted.stdout.index("{"):])
    assert payload["model"]["name"] == "xraygpt" and payload["findings"] == []


def test_image_tokens_and_greedy_text_match_the_reference(download: Path, bundle: Path) -> None:
    model = ChestXrayVLM.from_bundle(bundle)
    datasets = read_study([sample_study()])
    pixels = load_images(datasets, model.config.preprocess)
    expected = _reference_tokens(download, torch.from_numpy(pixels))
    _, tokens = model.vision(pixels)
    np.testing.assert_allclose(tokens[0], expected.numpy(), atol=1e-4)

    (draft,) = model.generate_reports([StudyRequest(model.analyse(datasets))])
    reference = _reference_text(download, expected, model.config.generation.max_new_tokens)
    assert reference and draft.text == reference
    assert "###" not in draft.text


def test_a_missing_llama_proj_is_named(download: Path, tmp_path: Path) -> None:
    copy = tmp_path / "XrayGPT"
    copy.mkdir()
    for name in (EVA_FILE, QFORMER_FILE):
        (copy / name).symlink_to(download / name)
    torch.save({"model": {"Qformer.bert.embeddings.position_ids": torch.zeros(1, 4)}},
               copy / STAGE2_FILE)
    result = runner.invoke(app, ["model", "import", "xraygpt", str(copy), "--out",
                                 str(tmp_path / "b"), "--llm", str(download / VICUNA_DIR)])
    assert result.exit_code != 0
    assert "checkpoint_0.pth" in result.output and "llama_proj.weight" in result.output
    assert not (tmp_path / "b").exists()
