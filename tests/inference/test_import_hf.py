"""``dicom_node model import hf``: a tiny LLaVA-1.5 checkpoint in the llava-hf layout becomes
a bundle whose ONNX vision side and torch LLM match transformers' own
``LlavaForConditionalGeneration`` (the reference) on the sample CR, and that drafts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from support.published.llava import IMAGE_TOKEN, write_llava_hf
from transformers import AutoTokenizer, LlavaForConditionalGeneration
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.drafting import draft_to_report
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, Provenance, StudyRequest, load_manifest
from inference.importers import import_hf
from inference.importers.hf import DEFAULT_INSTRUCTION, LLAVA_SYSTEM
from inference.preprocessing import load_images

runner = CliRunner()
PROVENANCE = Provenance(source="tiny llava", licence="none", intended_use="Tests only.")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llava_hf(tmp_path_factory.mktemp("llava") / "llava-tiny")


@pytest.fixture(scope="module")
def bundle(checkpoint: Path) -> Path:
    return import_hf(checkpoint, checkpoint.parent / "bundle", provenance=PROVENANCE,
                     name="llava-tiny")


def test_the_bundle_keeps_the_llm_in_the_checkpoint_and_has_no_findings_head(
    checkpoint: Path, bundle: Path
) -> None:
    manifest = load_manifest(bundle)
    config = manifest.config
    assert config.classifier.kind == "none" and manifest.thresholds == {}
    # vision_feature_layer -2 of a 3-layer tower: the first two layers are run
    assert config.vision.backbone["num_hidden_layers"] == 2
    assert config.vision.skip_tokens == 1
    assert manifest.llm_base == checkpoint.resolve()
    assert not (bundle / "llm").exists()
    assert json.loads((bundle / "llm_config" / "config.json").read_text())["model_type"] == "llama"
    assert str(checkpoint / "model.safetensors") in manifest.external_files
    result = runner.invoke(app, ["model", "verify", str(bundle)])
    assert result.exit_code == 0, result.output
    drafted = runner.invoke(app, ["infer", "-m", str(bundle), "--json", "--no-stream"])
    assert drafted.exit_code == 0, drafted.output
    assert json.loads(drafted.stdout[drafted.stdout.index("{"):])["report"]


def test_image_features_and_greedy_text_match_transformers(checkpoint: Path, bundle: Path) -> None:
    model = ChestXrayVLM.from_bundle(bundle)
    datasets = read_study([sample_study()])
    pixels = load_images(datasets, model.config.preprocess)
    reference = LlavaForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    pixel_values = torch.from_numpy(pixels)
    with torch.no_grad():
        features = reference.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=reference.config.vision_feature_layer,
            vision_feature_select_strategy=reference.config.vision_feature_select_strategy,
        )
    features = getattr(features, "pooler_output", features)  # an output object since 5.x
    expected = torch.stack(list(features)) if isinstance(features, list | tuple) else features
    probabilities, tokens = model.vision(pixels)
    assert probabilities.shape == (1, 0)
    np.testing.assert_allclose(tokens.reshape(expected.shape), expected.numpy(), atol=1e-4)

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    count = int(np.prod(expected.shape[:-1]))
    text = f"{LLAVA_SYSTEM} USER: {IMAGE_TOKEN * count}\n{DEFAULT_INSTRUCTION} ASSISTANT:"
    prompt = tokenizer.encode(text, add_special_tokens=False)
    ids = torch.tensor([[tokenizer.bos_token_id, *prompt]])
    steps = model.config.generation.max_new_tokens
    with torch.no_grad():
        out = reference.generate(input_ids=ids, pixel_values=pixel_values, do_sample=False,
                                 max_new_tokens=steps, attention_mask=torch.ones_like(ids))
    reference_text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    analysis = model.analyse(datasets)
    assert analysis.findings == []
    (draft,) = model.generate_reports([StudyRequest(analysis)])
    assert reference_text and draft.text == reference_text
    # Without a findings head the SR still codes all 14 findings, from the text alone.
    report, records = draft_to_report(draft)
    assert len(report.findings) == 14 and all(f.probability is None for f in report.findings)
    assert len(records) == 14


def test_models_it_cannot_run_are_refused_by_name(checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "maira"
    copy.mkdir()
    config = json.loads((checkpoint / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "model_type": "maira2",
                                                  "auto_map": {"AutoModel": "x.Y"}}))
    args = ["--licence", "research only", "--intended-use", "Research use only."]
    result = runner.invoke(app, ["model", "import", "hf", str(copy), "--out",
                                 str(tmp_path / "b"), *args])
    assert result.exit_code != 0
    assert "maira2" in result.output and "--trust-remote-code" in result.output

    result = runner.invoke(app, ["model", "import", "hf", str(checkpoint), "--out",
                                 str(tmp_path / "c")])
    assert result.exit_code != 0 and "--licence and --intended-use" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maira"]
