"""``dicom_node model import libra``: a tiny Libra download (its Llama and TAC connector in
``pytorch_model-*.bin`` shards, the original LLaVA layout) with a tiny RAD-DINO becomes a
bundle whose image tokens and greedy text match a reference of Libra's forward pass:
transformers' ``Dinov2Model`` (what Libra's ``DINOVisionTower`` runs) for every layer's
patch features, a plain-torch TAC, and the Llama on LLaVA's ``tokenizer_image_token`` ids."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
import torch
from support.published.libra import (
    LLM_HEADS,
    RAD_DINO_DIR,
    REPO_DIR,
    tac_state,
    write_libra,
)
from support.published.reference import greedy, libra_tac
from transformers import AutoTokenizer, Dinov2Model, LlamaConfig, LlamaForCausalLM
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, Provenance, StudyRequest, load_manifest
from inference.config import AlignerConfig
from inference.importers import import_libra
from inference.importers.libra import DEFAULT_INSTRUCTION, SYSTEM
from inference.preprocessing import load_images
from inference.vision import TACAligner

runner = CliRunner()
PROVENANCE = Provenance(source="tiny libra", licence="none", intended_use="Tests only.")
LICENCE = ["--licence", "Apache-2.0 (code); weights per model card",
           "--intended-use", "Research use only."]


@pytest.fixture(scope="module")
def download(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_libra(tmp_path_factory.mktemp("libra"))


@pytest.fixture(scope="module")
def bundle(download: Path) -> Path:
    return import_libra(download / REPO_DIR, download / "bundle",
                        vision_tower=download / RAD_DINO_DIR, provenance=PROVENANCE)


def _projector(download: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted((download / REPO_DIR).glob("pytorch_model-*.bin")):
        for key, value in torch.load(shard, weights_only=True).items():
            if key.startswith("model.mm_projector."):
                state[key.removeprefix("model.mm_projector.")] = value
    return state


def _layer_features(download: Path, pixels: torch.Tensor) -> torch.Tensor:
    """Libra's ``DINOVisionTower.get_features`` with ``select_layer='all'``, ``patch``,
    permuted to ``(B, L, N, D)``."""
    tower = Dinov2Model.from_pretrained(str(download / RAD_DINO_DIR)).eval()
    with torch.no_grad():
        states = tower(pixels, output_hidden_states=True).hidden_states
    return torch.stack([s[:, 1:] for s in states[1:]]).permute(1, 0, 2, 3)


def _reference_text(download: Path, image: torch.Tensor, after: str, steps: int) -> str:
    """conv_libra_v1 with ``<image>\\n`` + query, ``tokenizer_image_token``'s ids, greedy."""
    repo = download / REPO_DIR
    raw = json.loads((repo / "config.json").read_text())
    text = LlamaConfig.from_dict({k: v for k, v in raw.items() if not k.startswith("mm_")
                                  and k not in ("model_type", "architectures")})
    model = LlamaForCausalLM.from_pretrained(str(repo), config=text, dtype=torch.float32).eval()
    sp = spm.SentencePieceProcessor(model_file=str(repo / "tokenizer.model"))
    embed = model.get_input_embeddings()
    with torch.no_grad():
        inputs = torch.cat([embed(torch.tensor([sp.bos_id(), *sp.encode(f"{SYSTEM} USER: ")])),
                            image, embed(torch.tensor(sp.encode(after)))])[None]
    ids = greedy(model, inputs, steps, sp.eos_id())
    decoded = AutoTokenizer.from_pretrained(str(repo), trust_remote_code=False).decode(
        ids, skip_special_tokens=True)
    return str(decoded).strip()


def test_the_command_imports_it_with_its_tower_and_the_bundle_drafts(
    download: Path, tmp_path: Path
) -> None:
    args = ["model", "import", "libra", str(download / REPO_DIR), "--out",
            str(tmp_path / "bundle")]
    no_tower = runner.invoke(app, [*args, *LICENCE])
    assert no_tower.exit_code != 0 and "--vision-tower" in no_tower.output
    no_licence = runner.invoke(app, [*args, "--vision-tower", str(download / RAD_DINO_DIR)])
    assert no_licence.exit_code != 0 and "--licence and --intended-use" in no_licence.output
    assert not (tmp_path / "bundle").exists()

    done = runner.invoke(app, [*args, "--vision-tower", str(download / RAD_DINO_DIR),
                               *LICENCE])
    assert done.exit_code == 0, done.output
    manifest = load_manifest(tmp_path / "bundle")
    config = manifest.config
    assert config.aligner.kind == "tac" and config.vision.all_layers
    assert config.aligner.feature_layers == 12 and config.aligner.attention_heads == LLM_HEADS
    assert config.preprocess.resize_mode == "pad" and config.preprocess.pad_fill == "mean"
    assert manifest.llm_base == (download / REPO_DIR).resolve()
    assert not (tmp_path / "bundle" / "llm").exists()
    assert manifest.provenance is not None
    assert manifest.provenance.intended_use == "Research use only."
    verified = runner.invoke(app, ["model", "verify", str(tmp_path / "bundle")])
    assert verified.exit_code == 0, verified.output
    drafted = runner.invoke(app, ["infer", "-m", str(tmp_path / "bundle"), "--json",
                                  "--no-stream"])
    assert drafted.exit_code == 0, drafted.output
    assert json.loads(drafted.stdout[drafted.stdout.index("{"):])["report"]


def test_image_tokens_and_greedy_text_match_the_reference(download: Path, bundle: Path) -> None:
    model = ChestXrayVLM.from_bundle(bundle)
    datasets = read_study([sample_study()])
    pixels = load_images(datasets, model.config.preprocess)
    features = _layer_features(download, torch.from_numpy(pixels))
    with torch.no_grad():  # no prior study: the current image is its own prior, as in Libra
        expected = libra_tac(_projector(download), features, features, LLM_HEADS)
    probabilities, tokens = model.vision(pixels)
    assert probabilities.shape == (1, 0)
    np.testing.assert_allclose(tokens, expected.numpy(), atol=1e-4)

    analysis = model.analyse(datasets)
    steps = model.config.generation.max_new_tokens
    indication = "Fever and cough."
    for given, after in (
        (None, f"\n{DEFAULT_INSTRUCTION} ASSISTANT:"),
        (indication, f"\n{DEFAULT_INSTRUCTION} Following clinical context: Indication: "
                     f"{indication} ASSISTANT:"),
    ):
        wanted = _reference_text(download, expected[0], after, steps)
        (draft,) = model.generate_reports([StudyRequest(analysis, given)])
        assert wanted and draft.text == wanted


def test_the_connector_compares_with_a_prior_as_libra_does() -> None:
    gen = torch.Generator().manual_seed(3)
    state = tac_state(gen)
    aligner = TACAligner(32, 16, 64, AlignerConfig(kind="tac", attention_heads=LLM_HEADS,
                                                   feature_layers=12)).eval()
    aligner.load_state_dict(state)
    current = torch.randn(2, 12, 16, 32, generator=gen)
    prior = current + 0.5 * torch.randn(2, 12, 16, 32, generator=gen)
    with torch.no_grad():
        with_prior = aligner(current, prior)
        alone = aligner(current)
    torch.testing.assert_close(with_prior, libra_tac(state, current, prior, LLM_HEADS),
                               atol=1e-5, rtol=1e-5)
    assert not torch.allclose(with_prior, alone, atol=1e-3)


def test_a_non_square_image_is_padded_with_the_mean_colour(bundle: Path) -> None:
    model = ChestXrayVLM.from_bundle(bundle)
    wide = np.linspace(0.2, 0.9, 20 * 40, dtype=np.float32).reshape(20, 40)
    (pixels,) = load_images([wide], model.config.preprocess)
    # the top and bottom rows are padding: the mean colour, 0 once normalised
    assert np.abs(pixels[:, :4]).max() < 1e-6 and np.abs(pixels[:, -4:]).max() < 1e-6
    assert np.abs(pixels[:, 12:20]).max() > 0.5


def test_what_the_importer_cannot_run_is_named_and_leaves_nothing(
    download: Path, tmp_path: Path
) -> None:
    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(download, target)
        return target

    def refused(root: Path) -> str:
        result = runner.invoke(app, [
            "model", "import", "libra", str(root / REPO_DIR), "--out", str(root / "b"),
            "--vision-tower", str(root / RAD_DINO_DIR), *LICENCE])
        assert result.exit_code != 0
        assert not (root / "b").exists()
        return " ".join(result.output.split())

    mlp = copy("mlp")
    config = json.loads((mlp / REPO_DIR / "config.json").read_text())
    (mlp / REPO_DIR / "config.json").write_text(
        json.dumps({**config, "mm_projector_type": "mlp2x_gelu"}))
    assert "mm_projector_type 'mlp2x_gelu'" in refused(mlp)

    odd_heads = copy("odd-heads")
    config = json.loads((odd_heads / REPO_DIR / "config.json").read_text())
    (odd_heads / REPO_DIR / "config.json").write_text(
        json.dumps({**config, "num_attention_heads": 5}))
    assert "num_attention_heads 5" in refused(odd_heads)

    no_lfe = copy("no-lfe")
    for shard in (no_lfe / REPO_DIR).glob("pytorch_model-*.bin"):
        state = torch.load(shard, weights_only=True)
        state.pop("model.mm_projector.LFE.0.fc1.weight", None)
        torch.save(state, shard)
    index = no_lfe / REPO_DIR / "pytorch_model.bin.index.json"
    data = json.loads(index.read_text())
    data["weight_map"].pop("model.mm_projector.LFE.0.fc1.weight")
    index.write_text(json.dumps(data))
    assert "missing key 'model.mm_projector.LFE.0.fc1.weight'" in refused(no_lfe)

    short = copy("short-tower")
    tower = json.loads((short / RAD_DINO_DIR / "config.json").read_text())
    for key in ("stage_names", "out_features", "out_indices"):
        tower.pop(key, None)
    (short / RAD_DINO_DIR / "config.json").write_text(
        json.dumps({**tower, "num_hidden_layers": 8}))
    output = refused(short)
    assert "reads 12 layers" in output and "has 8" in output

    odd = copy("odd-tower")
    tower = json.loads((odd / RAD_DINO_DIR / "config.json").read_text())
    (odd / RAD_DINO_DIR / "config.json").write_text(
        json.dumps({**tower, "num_hidden_layers": 8}))  # stages still name 12 layers
    output = refused(odd)
    assert f"{RAD_DINO_DIR}/config.json: not a dinov2 config" in output
