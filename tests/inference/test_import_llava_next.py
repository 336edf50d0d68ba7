"""``dicom_node model import hf`` on a LLaVA-NeXT checkpoint: any-resolution tiles. A tiny
checkpoint in the llava-hf layout becomes a bundle whose tiles match transformers'
``LlavaNextImageProcessor`` in number and layout, and whose packed image tokens and greedy
text match ``LlavaNextForConditionalGeneration`` (the reference) on the sample CR."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from support.published.llava import IMAGE_TOKEN
from support.published.llava_next import PINPOINTS, TILE, write_llava_next_hf
from transformers import AutoImageProcessor, AutoTokenizer, LlavaNextForConditionalGeneration
from typer.testing import CliRunner

from dicom_node.cli import app
from dicom_node.pipeline.local_study import read_study, sample_study
from inference import ChestXrayVLM, Provenance, StudyRequest, load_manifest
from inference.anyres import tile_count
from inference.importers import import_hf
from inference.importers.hf import DEFAULT_INSTRUCTION, LLAVA_SYSTEM
from inference.preprocessing import dataset_to_display, load_tiled_images, tile_display

runner = CliRunner()
PROVENANCE = Provenance(source="tiny llava-next", licence="none", intended_use="Tests only.")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llava_next_hf(tmp_path_factory.mktemp("llava-next") / "llava-next-tiny")


@pytest.fixture(scope="module")
def bundle(checkpoint: Path) -> Path:
    return import_hf(checkpoint, checkpoint.parent / "bundle", provenance=PROVENANCE,
                     name="llava-next-tiny")


def test_the_bundle_tiles_each_image_and_runs_from_the_command_line(
    checkpoint: Path, bundle: Path
) -> None:
    config = load_manifest(bundle).config
    assert [list(p) for p in config.preprocess.grid_pinpoints] == PINPOINTS
    newline = load_file(str(checkpoint / "model.safetensors"))["image_newline"]
    assert np.allclose(config.aligner.image_newline, newline.numpy())
    result = runner.invoke(app, ["model", "verify", str(bundle)])
    assert result.exit_code == 0, result.output
    drafted = runner.invoke(app, ["infer", "-m", str(bundle), "--json", "--no-stream"])
    assert drafted.exit_code == 0, drafted.output
    assert json.loads(drafted.stdout[drafted.stdout.index("{"):])["report"]


def test_tiles_have_the_image_processors_number_and_layout(
    checkpoint: Path, bundle: Path
) -> None:
    preprocess = load_manifest(bundle).config.preprocess
    display = dataset_to_display(read_study([sample_study()])[0], preprocess)
    ours = tile_display(display, preprocess)
    processor = AutoImageProcessor.from_pretrained(str(checkpoint))
    image = Image.fromarray((display * 255).round().astype(np.uint8)).convert("RGB")
    processed = processor(images=image, return_tensors="np")
    theirs = processed["pixel_values"][0]
    assert processed["image_sizes"].tolist() == [list(display.shape)]
    count = tile_count(display.shape, preprocess.grid_pinpoints, TILE)
    assert len(ours) == count > 1 and len(theirs) >= count
    # The same black padding in the same places (the letterbox of the chosen resolution);
    # the pixels themselves differ by the resampling only (PIL bicubic on 8 bits here).
    pad = (0 - np.array(preprocess.mean)[:, None, None]) / np.array(preprocess.std)[:, None, None]
    for tile in range(count):
        our_pad = np.isclose(ours[tile], pad, atol=1e-5).all(0)
        their_pad = np.isclose(theirs[tile], pad, atol=1e-3).all(0)
        assert np.array_equal(our_pad, their_pad)
    assert np.abs(ours - theirs[:count]).mean() < 0.05


def test_packed_tokens_and_greedy_text_match_transformers(
    checkpoint: Path, bundle: Path
) -> None:
    model = ChestXrayVLM.from_bundle(bundle)
    datasets = read_study([sample_study()])
    tiles, _, sizes = load_tiled_images(datasets, model.config.preprocess)
    reference = LlavaNextForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    pixel_values, image_sizes = torch.from_numpy(tiles)[None], torch.tensor(sizes)
    with torch.no_grad():
        (expected,) = reference.get_image_features(
            pixel_values=pixel_values, image_sizes=image_sizes
        ).pooler_output
    analysis = model.analyse(datasets)
    assert analysis.findings == []
    # base tile 16 tokens + the unpadded grid, each row ending in the newline vector
    assert analysis.image_tokens.shape == expected.shape and expected.shape[0] > 16
    np.testing.assert_allclose(analysis.image_tokens.numpy(), expected.numpy(), atol=1e-4)

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    text = (f"{LLAVA_SYSTEM} USER: {IMAGE_TOKEN * expected.shape[0]}\n{DEFAULT_INSTRUCTION} "
            "ASSISTANT:")
    ids = torch.tensor([[tokenizer.bos_token_id,
                         *tokenizer.encode(text, add_special_tokens=False)]])
    with torch.no_grad():
        out = reference.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixel_values,
            image_sizes=image_sizes, do_sample=False,
            max_new_tokens=model.config.generation.max_new_tokens,
        )
    wanted = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
    (draft,) = model.generate_reports([StudyRequest(analysis)])
    assert wanted and draft.text == wanted


def test_a_checkpoint_without_its_newline_vector_is_named(
    checkpoint: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "no-newline"
    shutil.copytree(checkpoint, copy)
    weights = load_file(str(copy / "model.safetensors"))
    del weights["image_newline"]
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    result = runner.invoke(app, ["model", "import", "hf", str(copy), "--out",
                                 str(tmp_path / "b"), "--licence", "Llama 2",
                                 "--intended-use", "Research use only."])
    assert result.exit_code != 0 and "image_newline" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no-newline"]
