"""``dicom_node model import hf`` on a Gemma 3 checkpoint (MedGemma 4B's format): a tiny
checkpoint in the published layout becomes a bundle whose ONNX vision side and torch LLM match
transformers' own ``Gemma3ForConditionalGeneration`` and ``Gemma3Processor`` (the reference)
on the sample CR, in reports, batches, streams and dialog turns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.published.gemma3 import BOI, write_gemma3
from transformers import AutoProcessor, Gemma3ForConditionalGeneration
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, Provenance, StudyRequest, load_manifest
from inference.importers import import_hf
from inference.importers.hf import DEFAULT_INSTRUCTION, GEMMA3_SYSTEM
from inference.model import RuntimeOptions
from inference.multimodal import assemble_feature_batch
from inference.preprocessing import load_images

runner = CliRunner()
PROVENANCE = Provenance(source="tiny gemma 3", licence="none", intended_use="Tests only.")
FLOAT32 = RuntimeOptions(dtype="float32")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gemma3(tmp_path_factory.mktemp("gemma3") / "medgemma-tiny")


@pytest.fixture(scope="module")
def bundle(checkpoint: Path) -> Path:
    return import_hf(checkpoint, checkpoint.parent / "bundle", provenance=PROVENANCE,
                     name="medgemma-tiny")


@pytest.fixture(scope="module")
def model(bundle: Path) -> ChestXrayVLM:
    return ChestXrayVLM.from_bundle(bundle, FLOAT32)


@pytest.fixture(scope="module")
def reference(checkpoint: Path) -> Gemma3ForConditionalGeneration:
    return Gemma3ForConditionalGeneration.from_pretrained(
        str(checkpoint), dtype=torch.float32
    ).eval()


def _processor_inputs(checkpoint: Path, user_text: str) -> dict[str, torch.Tensor]:
    """transformers' own Gemma 3 prompt: the chat template, ``<start_of_image>`` expanded
    by ``Gemma3Processor``, and the token types that mark the image block."""
    processor = AutoProcessor.from_pretrained(str(checkpoint))
    messages = [{"role": "system", "content": GEMMA3_SYSTEM},
                {"role": "user", "content": user_text + BOI}]
    text = processor.tokenizer.apply_chat_template(messages, tokenize=False,
                                                   add_generation_prompt=True)
    return dict(processor(text=text, images=Image.new("RGB", (8, 8)), return_tensors="pt"))


def _reference_text(
    checkpoint: Path,
    reference: Gemma3ForConditionalGeneration,
    pixel_values: torch.Tensor,
    user_text: str,
    steps: int,
) -> str:
    """Greedy text of transformers' Gemma 3 on its processor's prompt."""
    inputs = _processor_inputs(checkpoint, user_text)
    with torch.no_grad():
        out = reference.generate(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
            token_type_ids=inputs["token_type_ids"], pixel_values=pixel_values,
            max_new_tokens=steps, do_sample=False,
        )
    new = out[0, inputs["input_ids"].shape[1]:]
    processor = AutoProcessor.from_pretrained(str(checkpoint))
    return str(processor.tokenizer.decode(new, skip_special_tokens=True)).strip()


def test_the_bundle_keeps_the_llm_in_its_shards_and_runs_from_the_command_line(
    checkpoint: Path, bundle: Path
) -> None:
    manifest = load_manifest(bundle)
    config = manifest.config
    assert config.classifier.kind == "none" and config.aligner.kind == "gemma3"
    assert config.aligner.max_image_tokens == 4 and config.max_images == 1
    assert config.preprocess.resize_mode == "stretch" and config.preprocess.mean == (0.5,) * 3
    assert manifest.llm_base == checkpoint.resolve() and not (bundle / "llm").exists()
    shards = {str(checkpoint / f"model-0000{i}-of-00002.safetensors") for i in (1, 2)}
    assert shards <= set(manifest.external_files)
    assert manifest.provenance is not None and manifest.provenance.source == "tiny gemma 3"
    result = runner.invoke(app, ["model", "verify", str(bundle)])
    assert result.exit_code == 0, result.output
    drafted = runner.invoke(app, ["infer", "-m", str(bundle), "--json", "--no-stream"])
    assert drafted.exit_code == 0, drafted.output
    assert json.loads(drafted.stdout[drafted.stdout.index("{"):])["report"]


def test_image_features_and_greedy_text_match_transformers(
    checkpoint: Path, model: ChestXrayVLM, reference: Gemma3ForConditionalGeneration
) -> None:
    datasets = read_study([sample_study()])
    pixels = load_images(datasets, model.config.preprocess)
    pixel_values = torch.from_numpy(pixels)
    with torch.no_grad():
        expected = reference.get_image_features(pixel_values=pixel_values).pooler_output
    probabilities, tokens = model.vision(pixels)
    assert probabilities.shape == (1, 0)
    np.testing.assert_allclose(tokens, expected.numpy(), atol=1e-4)

    # The node's token ids and token types (1 on the image block, which Gemma 3 lets
    # attend both ways) are exactly the processor's.
    expected_inputs = _processor_inputs(checkpoint, DEFAULT_INSTRUCTION)
    prompt = model.prompts.encode(findings=None, instruction=DEFAULT_INSTRUCTION)
    assert model.llm.image_token_id is not None
    batch = assemble_feature_batch(
        [prompt], [torch.from_numpy(tokens[0])], image_token_id=model.llm.image_token_id,
        pad_token_id=model.llm.pad_token_id(), device=torch.device("cpu"), dtype=torch.float32,
    )
    assert batch.input_ids.tolist() == expected_inputs["input_ids"].tolist()
    assert batch.token_type_ids.tolist() == expected_inputs["token_type_ids"].tolist()

    steps = model.config.generation.max_new_tokens
    wanted = _reference_text(checkpoint, reference, pixel_values, DEFAULT_INSTRUCTION, steps)
    analysis = model.analyse(datasets)
    (draft,) = model.generate_reports([StudyRequest(analysis)])
    assert wanted and draft.text == wanted

    # Streaming gives the same text; a batch with a second, longer prompt (left padding)
    # gives each study the text it gets alone.
    pieces = "".join(model.stream_report(analysis)[1]).strip()
    assert pieces == wanted
    indication = "Shortness of breath after a fall, rule out pneumothorax"
    alone = model.generate_reports([StudyRequest(analysis, indication)])[0].text
    batch = model.generate_reports([StudyRequest(analysis), StudyRequest(analysis, indication)])
    assert [d.text for d in batch] == [wanted, alone]


def test_a_dialog_turn_is_answered_on_the_same_image_features(
    checkpoint: Path, model: ChestXrayVLM, reference: Gemma3ForConditionalGeneration
) -> None:
    datasets = read_study([sample_study()])
    analysis = model.analyse(datasets)
    answer = model.chat(analysis, "Heart size normal.", [], "Is there an effusion?")
    assert isinstance(answer, str) and answer
    # The vision tower runs in ONNX: the LLM holds no copy of it.
    assert not any("vision_tower" in name for name, _ in model.llm.model.named_parameters())


def test_files_that_do_not_fit_are_named_and_leave_nothing(
    checkpoint: Path, tmp_path: Path
) -> None:
    args = ["--licence", "HAI-DEF terms", "--intended-use", "Research use only."]
    no_template = tmp_path / "no-template"
    shutil.copytree(checkpoint, no_template)
    (no_template / "chat_template.jinja").unlink()
    result = runner.invoke(app, ["model", "import", "hf", str(no_template), "--out",
                                 str(tmp_path / "b1"), *args])
    assert result.exit_code != 0 and "chat template" in result.output

    odd_tokens = tmp_path / "odd-tokens"
    shutil.copytree(checkpoint, odd_tokens)
    config = json.loads((odd_tokens / "config.json").read_text())
    (odd_tokens / "config.json").write_text(json.dumps({**config, "mm_tokens_per_image": 3}))
    result = runner.invoke(app, ["model", "import", "hf", str(odd_tokens), "--out",
                                 str(tmp_path / "b2"), *args])
    assert result.exit_code != 0 and "max_image_tokens" in result.output

    pan_and_scan = tmp_path / "pan-and-scan"
    shutil.copytree(checkpoint, pan_and_scan)
    processor = json.loads((pan_and_scan / "preprocessor_config.json").read_text())
    (pan_and_scan / "preprocessor_config.json").write_text(
        json.dumps({**processor, "do_pan_and_scan": True}))
    result = runner.invoke(app, ["model", "import", "hf", str(pan_and_scan), "--out",
                                 str(tmp_path / "b3"), *args])
    assert result.exit_code != 0
    assert "preprocessor_config.json" in result.output and "do_pan_and_scan" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "no-template", "odd-tokens", "pan-and-scan"
    ]
