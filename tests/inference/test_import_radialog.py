"""``dicom_node model import radialog``: a tiny RaDialog v1 download in the published formats
becomes a bundle that verifies, matches a reference forward pass, and drafts.

The reference is written here with plain torch operations on the published state dicts
(hi-ml-multimodal, which holds BioViL-T's own code, needs torchvision, which the product does
not install; LAVIS and RaDialog's LLaMA fork are not on PyPI): BioViL-T as RaDialog's
``ImageModel`` runs it for one image, LAVIS's BERT Q-Former over the queries, RaDialog's
classifier head, and RaDialog's ``LlamaModel.split_at_img`` splice with the LoRA deltas
added to the weights by hand, decoded greedily with a full forward pass per token.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
import torch.nn.functional as F
from peft import PeftModel
from support.published.radialog import (
    ADAPTER_DIR,
    BIOVIL_FILE,
    CLASSIFIER_FILE,
    PROJECTOR_FILE,
    QFORMER_FILE,
    RADIALOG_LABELS,
    VICUNA_DIR,
    TinySizes,
    write_radialog_v1,
)
from support.published.reference import biovil, crop, greedy, qformer
from transformers import AutoTokenizer, LlamaForCausalLM
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import (
    ChestXrayVLM,
    InferenceError,
    RuntimeOptions,
    StudyRequest,
    load_manifest,
    verify_vision_parity,
)
from inference.importers import import_radialog
from inference.importers.radialog import REPORT_INSTRUCTION, SYSTEM
from inference.preprocessing import load_images

runner = CliRunner()


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_radialog_v1(tmp_path_factory.mktemp("radialog") / "RaDialog")


@pytest.fixture(scope="module")
def bundle(download: Path) -> Path:
    return import_radialog(
        download, download.parent / "bundle", llm=download / VICUNA_DIR,
        visual_projector=download / PROJECTOR_FILE,
    )


# --------------------------------------------------------------------------- reference
def _reference_vision(download: Path, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RaDialog v1's image tokens (after ``img_proj_layer``) and finding probabilities."""
    load = lambda name: torch.load(download / name, weights_only=True)  # noqa: E731
    encoder = {k: v for k, v in load(BIOVIL_FILE).items() if not k.startswith("projector.")}
    encoder |= load(PROJECTOR_FILE)
    ckpt = load(QFORMER_FILE)["model"]
    projected = biovil(encoder, crop(pixels, 448))
    tokens = projected.reshape(1, -1, projected.shape[1])  # RaDialog's reshape: no permute
    tokens = F.layer_norm(tokens, tokens.shape[-1:], ckpt["ln_vision.weight"],
                          ckpt["ln_vision.bias"])
    queries = qformer(ckpt, tokens, heads=TinySizes().qformer_hidden // 64)
    adapter = load(f"{ADAPTER_DIR}/adapter_model.bin")
    image = F.linear(queries, adapter["base_model.model.model.img_proj_layer.weight"],
                     adapter["base_model.model.model.img_proj_layer.bias"])

    c = {k.removeprefix("model.biovil_encoder."): v
         for k, v in load(CLASSIFIER_FILE)["state_dict"].items()}
    grid = F.avg_pool2d(biovil(c, crop(pixels, 488)), 4).view(1, -1)
    hidden = F.relu(F.linear(grid, c["model.fc1.weight"], c["model.fc1.bias"]))
    probabilities = torch.sigmoid(F.linear(hidden, c["model.fc2.weight"], c["model.fc2.bias"]))
    return image[0], probabilities[0]


def _radialog_findings(probabilities: torch.Tensor) -> str:
    """RaDialog test.py's findings string (``create_structured_chexpert_findings``)."""
    names = [label for label, p in zip(RADIALOG_LABELS, probabilities, strict=True) if p > 0.5]
    if "No Finding" in names and any(n not in ("No Finding", "Support Devices") for n in names):
        names.remove("No Finding")
    return ", ".join(names).lower().strip() or "no common findings"


def _reference_generate(download: Path, image: torch.Tensor, findings: str, steps: int) -> str:
    """RaDialog's prompt as transformers 4.28's slow LlamaTokenizer made it: the text next to
    the added special token ``<IMG>`` is stripped of whitespace and each piece is encoded by
    SentencePiece on its own (here with sentencepiece itself), BOS first."""
    sp = spm.SentencePieceProcessor(model_file=str(download / VICUNA_DIR / "tokenizer.model"))
    before = f"{SYSTEM} USER: Image information:"
    after = f". Predicted Findings: {findings}. {REPORT_INSTRUCTION} ASSISTANT:"
    img_id = -1  # never looked up: the image tokens take the 32 places
    ids = [sp.bos_id(), *sp.encode(before), *[img_id] * image.shape[0], *sp.encode(after)]
    model = LlamaForCausalLM.from_pretrained(str(download / VICUNA_DIR)).eval()
    adapter = torch.load(download / ADAPTER_DIR / "adapter_model.bin", weights_only=True)
    config = json.loads((download / ADAPTER_DIR / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    with torch.no_grad():
        for name, module in model.named_modules():
            key = f"base_model.model.{name}.lora_A.weight"
            if key in adapter:
                delta = adapter[key.replace("lora_A", "lora_B")] @ adapter[key]
                module.weight += scale * delta
        embed = model.get_input_embeddings()
        positions = [i for i, t in enumerate(ids) if t == img_id]
        assert len(positions) == image.shape[0]
        start = positions[0]
        inputs = torch.cat([embed(torch.tensor(ids[:start])), image,
                            embed(torch.tensor(ids[start + image.shape[0]:]))])[None]
    generated = greedy(model, inputs, steps, sp.eos_id())
    tokenizer = AutoTokenizer.from_pretrained(str(download / VICUNA_DIR))
    return tokenizer.decode(generated, skip_special_tokens=True).strip()


# --------------------------------------------------------------------------- tests
def test_the_bundle_reads_its_sizes_from_the_files_and_verifies(bundle: Path) -> None:
    manifest = load_manifest(bundle)
    config = manifest.config
    sizes = TinySizes()
    assert config.vision.biovil_t == {
        "stem_width": sizes.stem, "blocks": list(sizes.blocks), "expansion": 4,
        "vit_width": sizes.vit, "projector_width": sizes.qformer_in,
    }
    assert config.aligner.qformer == {
        "hidden_size": sizes.qformer_hidden, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 4 * sizes.qformer_hidden, "cross_attention_frequency": 2,
    }
    assert config.aligner.num_query_tokens == 32
    assert config.classifier.labels == RADIALOG_LABELS
    assert config.classifier.hidden_size == sizes.classifier_hidden
    assert config.llm_hidden_size == sizes.llm_hidden
    assert manifest.provenance is not None and "RaDialog" in manifest.provenance.source
    # The LLM is referenced where the site keeps it, not copied.
    assert manifest.llm_base == (bundle.parent / "RaDialog" / VICUNA_DIR).resolve()
    assert not (bundle / "llm").exists()
    result = verify_vision_parity(bundle, batch_size=2)
    assert result.max_abs_diff < 1e-4
    drafted = runner.invoke(app, ["infer", "-m", str(bundle), "--json", "--no-stream"])
    assert drafted.exit_code == 0, drafted.output
    payload = json.loads(drafted.stdout[drafted.stdout.index("{"):])
    assert payload["model"]["name"] == "radialog-v1" and len(payload["findings"]) == 14


def test_image_tokens_findings_and_greedy_text_match_the_reference(
    download: Path, bundle: Path
) -> None:
    model = ChestXrayVLM.from_bundle(bundle)
    datasets = read_study([sample_study()])
    pixels = load_images(datasets, model.config.preprocess)
    expected_tokens, expected_probabilities = _reference_vision(download, torch.from_numpy(pixels))

    probabilities, tokens = model.vision(pixels)  # ONNX Runtime
    np.testing.assert_allclose(probabilities[0], expected_probabilities.numpy(), atol=1e-4)
    np.testing.assert_allclose(tokens[0], expected_tokens.numpy(), atol=1e-4)

    analysis = model.analyse(datasets)
    (draft,) = model.generate_reports([StudyRequest(analysis)])
    findings = _radialog_findings(expected_probabilities)
    expected = _reference_generate(download, expected_tokens, findings,
                                   model.config.generation.max_new_tokens)
    assert expected  # the random model says something
    assert draft.text == expected

    # Its one adapter serves both tasks: merged into the weights in place, not copied.
    assert model.llm.merged_adapters == ["instruct"]
    assert not isinstance(model.llm.model, PeftModel)
    with pytest.raises(InferenceError, match="merged into the weights"):
        model.llm.use_adapter(None)
    unmerged = ChestXrayVLM.from_bundle(bundle, RuntimeOptions(merge_adapters=False))
    assert isinstance(unmerged.llm.model, PeftModel)
    assert unmerged.llm.weight_bytes > model.llm.weight_bytes  # + the LoRA matrices only
    (same,) = unmerged.generate_reports([StudyRequest(analysis)])
    assert same.text == draft.text


def test_a_missing_projector_is_named_and_nothing_is_written(
    download: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    result = runner.invoke(app, ["model", "import", "radialog", str(download), "--out", str(out),
                                 "--llm", str(download / VICUNA_DIR)])
    assert result.exit_code != 0
    assert "checkpoint_4.pth" in result.output
    assert "visual_encoder.projector.model.0.weight" in result.output
    assert list(tmp_path.iterdir()) == []


def _copy(download: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "RaDialog"
    shutil.copytree(download, copy)
    return copy


def test_a_missing_key_and_a_wrong_shape_are_named(download: Path, tmp_path: Path) -> None:
    copy = _copy(download, tmp_path)
    ckpt = torch.load(copy / CLASSIFIER_FILE, weights_only=True)
    del ckpt["state_dict"]["model.fc1.bias"]
    torch.save(ckpt, copy / CLASSIFIER_FILE)
    args = ["--llm", str(copy / VICUNA_DIR), "--visual-projector", str(copy / PROJECTOR_FILE)]
    result = runner.invoke(app, ["model", "import", "radialog", str(copy), "--out",
                                 str(tmp_path / "a"), *args])
    assert result.exit_code != 0
    assert "ChexpertClassifier" in result.output and "model.fc1.bias" in result.output

    ckpt["state_dict"]["model.fc1.bias"] = torch.zeros(3)
    torch.save(ckpt, copy / CLASSIFIER_FILE)
    result = runner.invoke(app, ["model", "import", "radialog", str(copy), "--out",
                                 str(tmp_path / "b"), *args])
    assert result.exit_code != 0
    assert "ChexpertClassifier" in result.output and "classifier.fc1.bias" in result.output
    assert "(3,)" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RaDialog"]


def test_a_file_that_is_not_a_checkpoint_or_an_unknown_kind_is_refused(
    download: Path, tmp_path: Path
) -> None:
    copy = _copy(download, tmp_path)
    (copy / QFORMER_FILE).write_bytes(b"not a checkpoint")
    result = runner.invoke(app, ["model", "import", "radialog", str(copy), "--out",
                                 str(tmp_path / "a"), "--llm", str(copy / VICUNA_DIR)])
    assert result.exit_code != 0
    assert "checkpoint_4.pth: not a torch checkpoint" in result.output

    result = runner.invoke(app, ["model", "import", "maira", str(copy), "--out",
                                 str(tmp_path / "b"), "--llm", str(copy / VICUNA_DIR)])
    assert result.exit_code != 0
    assert "unknown kind 'maira'" in result.output and "radialog" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["RaDialog"]


def test_a_pickle_that_would_run_code_is_refused(download: Path, tmp_path: Path) -> None:
    copy = _copy(download, tmp_path)
    torch.save({"model": {"query_tokens": torch.zeros(1)}, "config": Path("/")},
               copy / QFORMER_FILE)
    result = runner.invoke(app, ["model", "import", "radialog", str(copy), "--out",
                                 str(tmp_path / "a"), "--llm", str(copy / VICUNA_DIR)])
    assert result.exit_code != 0
    assert "refused (weights_only)" in result.output
