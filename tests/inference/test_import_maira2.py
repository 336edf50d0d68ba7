"""``dicom_node model import hf --trust-remote-code`` on a MAIRA-2 checkpoint: a tiny
checkpoint in ``microsoft/maira-2``'s layout (its own code files included, which raise if
run) becomes a bundle whose ONNX vision side and torch LLM match a reference built from
transformers' ``Dinov2Backbone`` and ``LlamaForCausalLM`` the way MAIRA-2's modeling file
assembles them, on the prompt its processor writes for a frontal image alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from support.published.maira2 import (
    IMAGE_TOKEN,
    REMOTE_FILES,
    SYSTEM,
    projector,
    write_maira2,
)
from transformers import (
    AutoTokenizer,
    Dinov2Backbone,
    Dinov2Config,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerBase,
)
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, Provenance, StudyRequest, load_manifest
from inference.importers import import_hf
from inference.model import RuntimeOptions
from inference.preprocessing import load_images
from inference.prompt import Turn

runner = CliRunner()
PROVENANCE = Provenance(source="tiny maira-2", licence="MSRLA", intended_use="Research only.")
FLOAT32 = RuntimeOptions(dtype="float32")
LICENCE = ["--licence", "MSRLA", "--intended-use", "Research use only."]
FINDINGS_REQUEST = (
    "Provide a structured description of the findings in the radiology study in comparison "
    "to the prior frontal image."
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_maira2(tmp_path_factory.mktemp("maira2") / "maira-2-tiny")


@pytest.fixture(scope="module")
def bundle(checkpoint: Path) -> Path:
    return import_hf(checkpoint, checkpoint.parent / "bundle", provenance=PROVENANCE,
                     name="maira-2-tiny", trust_remote_code=True)


@pytest.fixture(scope="module")
def model(bundle: Path) -> ChestXrayVLM:
    return ChestXrayVLM.from_bundle(bundle, FLOAT32)


def _tensors(checkpoint: Path, prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for shard in sorted(checkpoint.glob("model-*.safetensors")):
        with safe_open(str(shard), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open API
                if key.startswith(prefix):
                    out[key[len(prefix):]] = handle.get_tensor(key)
    return out


class Reference:
    """MAIRA-2 as its modeling file assembles it: the Dinov2 backbone's last feature map
    (LayerNorm applied) without its CLS token, the projector, and LLaVA's merge of the
    image features into the Llama's input embeddings at the ``<image>`` positions."""

    def __init__(self, checkpoint: Path) -> None:
        raw = json.loads((checkpoint / "config.json").read_text())
        vision = Dinov2Config.from_dict(
            {k: v for k, v in raw["vision_config"].items() if k != "model_type"}
        )
        text = LlamaConfig.from_dict(
            {k: v for k, v in raw["text_config"].items() if k != "model_type"}
        )
        # transformers' own loader, from the published shards (its names for each version)
        self.backbone = Dinov2Backbone.from_pretrained(
            str(checkpoint), config=vision, key_mapping={r"^vision_tower\.": ""}
        ).eval()
        self.projector = projector(vision.hidden_size, text.hidden_size,
                                   raw["projector_n_layers"]).eval()
        self.projector.load_state_dict(_tensors(checkpoint, "multi_modal_projector.layers."))
        self.llm = LlamaForCausalLM.from_pretrained(
            str(checkpoint), config=text, key_mapping={r"^language_model\.": ""}
        ).eval()
        self.image_token_id = int(raw["image_token_index"])

    def features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            maps = self.backbone(pixel_values, output_hidden_states=True).feature_maps
            return self.projector(maps[-1][:, 1:])

    def greedy(self, ids: list[int], features: torch.Tensor, steps: int) -> list[int]:
        input_ids = torch.tensor([ids])
        with torch.no_grad():
            embeds = self.llm.get_input_embeddings()(input_ids)
            embeds[input_ids == self.image_token_id] = features.reshape(-1, embeds.shape[-1])
            out = self.llm.generate(
                inputs_embeds=embeds, attention_mask=torch.ones_like(input_ids),
                max_new_tokens=steps, do_sample=False,
            )
        return [int(t) for t in out[0]]


def _processor_prompt(tokenizer: PreTrainedTokenizerBase, indication: str | None) -> str:
    """MAIRA-2's processor's reporting prompt for a current frontal image alone (no lateral,
    no prior, no grounding), through its chat template: a test-side rewrite of what its
    ``format_reporting_input`` builds."""
    section = indication if indication else "N/A"
    content: list[dict[str, Any]] = [
        {"index": None, "text": "Given the current frontal image only", "type": "text"},
        {"index": 0, "text": None, "type": "image"},
        {"index": None, "type": "text", "text": f" {FINDINGS_REQUEST} INDICATION: {section} "
         "TECHNIQUE: N/A COMPARISON: N/A"},
    ]
    text = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                         add_generation_prompt=True, tokenize=False)
    assert isinstance(text, str)
    return text


def _processor_ids(checkpoint: Path, indication: str | None, image_tokens: int) -> list[int]:
    """The ids the processor gives: ``<image>`` repeated once per image token, the text
    tokenized with the tokenizer's special tokens (BOS)."""
    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint), trust_remote_code=False)
    tokenizer.chat_template = json.loads(
        (checkpoint / "chat_template.json").read_text())["chat_template"]
    text = _processor_prompt(tokenizer, indication).replace(IMAGE_TOKEN, IMAGE_TOKEN * image_tokens)
    return [int(i) for i in tokenizer(text).input_ids]


def test_it_is_imported_only_with_the_flag_and_its_code_is_never_run(
    checkpoint: Path, tmp_path: Path
) -> None:
    refused = runner.invoke(app, ["model", "import", "hf", str(checkpoint), "--out",
                                  str(tmp_path / "refused"), *LICENCE])
    assert refused.exit_code != 0
    assert "maira2" in refused.output and "--trust-remote-code" in refused.output
    assert not (tmp_path / "refused").exists()

    imported = runner.invoke(app, ["model", "import", "hf", str(checkpoint), "--out",
                                   str(tmp_path / "bundle"), "--trust-remote-code", *LICENCE])
    # the checkpoint's three code files raise when run: the import succeeded without them
    assert imported.exit_code == 0, imported.output
    notice = " ".join(imported.output.split())
    assert "--trust-remote-code" in notice and "does not run that code" in notice
    assert all(name in notice for name in REMOTE_FILES)
    manifest = load_manifest(tmp_path / "bundle")
    assert manifest.provenance is not None and manifest.provenance.licence == "MSRLA"
    assert manifest.provenance.intended_use == "Research use only."
    verified = runner.invoke(app, ["model", "verify", str(tmp_path / "bundle")])
    assert verified.exit_code == 0, verified.output
    drafted = runner.invoke(app, ["infer", "-m", str(tmp_path / "bundle"), "--json",
                                  "--no-stream"])
    assert drafted.exit_code == 0, drafted.output
    assert json.loads(drafted.stdout[drafted.stdout.index("{"):])["report"]


def test_the_bundle_reads_its_sizes_from_the_files_and_keeps_the_llm_in_its_shards(
    checkpoint: Path, bundle: Path
) -> None:
    manifest = load_manifest(bundle)
    config = manifest.config
    assert config.vision.backbone["model_type"] == "dinov2"
    assert config.vision.backbone["num_hidden_layers"] == 3 and config.vision.skip_tokens == 1
    assert config.aligner.kind == "mlp" and config.aligner.mlp_layers == 4
    assert config.classifier.kind == "none" and config.max_images == 1
    assert config.preprocess.stretch_display and config.preprocess.resize_mode == "crop"
    assert config.preprocess.mean == (0.5307,) * 3 and config.preprocess.std == (0.2583,) * 3
    assert manifest.llm_base == checkpoint.resolve() and not (bundle / "llm").exists()
    shards = {str(checkpoint / f"model-0000{i}-of-00002.safetensors") for i in (1, 2)}
    assert shards <= set(manifest.external_files)


def test_image_features_prompt_and_greedy_text_match_the_reference(
    checkpoint: Path, model: ChestXrayVLM
) -> None:
    reference = Reference(checkpoint)
    datasets = read_study([sample_study()])
    pixels = load_images(datasets, model.config.preprocess)
    expected = reference.features(torch.from_numpy(pixels))
    probabilities, tokens = model.vision(pixels)
    assert probabilities.shape == (1, 0)
    np.testing.assert_allclose(tokens, expected.numpy(), atol=1e-4)

    count = int(expected.shape[1])
    analysis = model.analyse(datasets)
    steps = model.config.generation.max_new_tokens
    texts = {}
    for indication in (None, "Cough and fever for three days."):
        wanted_ids = _processor_ids(checkpoint, indication, count)
        prompt = model.prompts.encode(findings=None, indication=indication,
                                      instruction=model.config.prompt.report_instruction)
        image_id = reference.image_token_id
        assert prompt.prefix_ids + [image_id] * count + prompt.suffix_ids == wanted_ids
        new = reference.greedy(wanted_ids, expected, steps)
        wanted = model.llm.tokenizer.decode(new, skip_special_tokens=True).strip()
        (draft,) = model.generate_reports([StudyRequest(analysis, indication)])
        assert wanted and draft.text == wanted
        texts[indication] = wanted
    assert len(set(texts.values())) == 2  # the indication reaches the model


def test_a_dialog_turn_goes_through_the_checkpoints_template(model: ChestXrayVLM) -> None:
    draft = "The lungs are clear."
    history = [Turn("user", FINDINGS_REQUEST), Turn("assistant", draft)]
    prompt = model.prompts.encode(findings=None, report=draft, history=history,
                                  instruction="Is there a pleural effusion?")
    assert prompt.text.startswith(SYSTEM + " USER: Given the current frontal image only<image>")
    assert f" ASSISTANT: {draft}</s> USER: Is there a pleural effusion? ASSISTANT:" in prompt.text
    analysis = model.analyse(read_study([sample_study()]))
    answer = model.chat(analysis, draft, history, "Is there a pleural effusion?")
    assert isinstance(answer, str) and answer


def test_each_image_is_rescaled_to_its_own_range_first(model: ChestXrayVLM) -> None:
    gradient = np.linspace(0.0, 1.0, 48 * 40, dtype=np.float32).reshape(48, 40)
    faint = 0.3 + 0.4 * gradient  # the same image with less contrast
    full, narrow = load_images([gradient, faint], model.config.preprocess)
    np.testing.assert_allclose(full, narrow, atol=1e-5)


def test_files_that_do_not_fit_are_named_and_leave_nothing(
    checkpoint: Path, tmp_path: Path
) -> None:
    def edited(name: str, change: dict[str, Any], file: str = "config.json") -> Path:
        copy = tmp_path / name
        shutil.copytree(checkpoint, copy)
        data = json.loads((copy / file).read_text())
        for key, value in change.items():
            target = data
            *path, last = key.split(".")
            for part in path:
                target = target[part]
            target[last] = value
        (copy / file).write_text(json.dumps(data))
        return copy

    def refused(source: Path) -> str:
        result = runner.invoke(app, ["model", "import", "hf", str(source), "--out",
                                     str(tmp_path / f"{source.name}-bundle"),
                                     "--trust-remote-code", *LICENCE])
        assert result.exit_code != 0
        return " ".join(result.output.split())

    output = refused(edited("no-norm", {"vision_config.apply_layernorm": False}))
    assert "config.json" in output and "apply_layernorm" in output
    output = refused(edited("five-layers", {"projector_n_layers": 5}))
    assert "multi_modal_projector.layers.8.weight" in output
    output = refused(edited("deep", {"projector_n_layers": 10**6}))  # refused before it is built
    assert "multi_modal_projector.layers.8.weight" in output
    output = refused(edited("wrong-tokens", {"image_seq_length": 7}))
    assert "image_seq_length 7" in output
    no_template = tmp_path / "no-template"
    shutil.copytree(checkpoint, no_template)
    (no_template / "chat_template.json").unlink()
    output = refused(no_template)
    assert "chat_template.json" in output
    chexagent = edited("chexagent", {"model_type": "chexagent"})
    output = refused(chexagent)
    assert "chexagent" in output and "does not run downloaded code" in output
    bundles = [p.name for p in tmp_path.iterdir() if p.name.endswith("-bundle")]
    assert bundles == [] and not any(p.name.startswith(".") for p in tmp_path.iterdir())
