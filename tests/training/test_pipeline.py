"""The staged training pipeline end to end on tiny models and tiny phantoms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

from dicom_node.cli import app
from inference import ChestXrayVLM, RuntimeOptions, load_manifest
from inference.tiny import tiny_config, tiny_llm, train_tiny_tokenizer
from inference.vision import QFormerAligner
from training.config import parse_training_config
from training.engine.checkpoint import load_checkpoint
from training.engine.context import build_context
from training.phantoms import PhantomConfig, write_phantoms
from training.recipes.pipeline import train
from training.stages import AlignmentHeads, init_qformer_from_bert, run_alignment_stage

runner = CliRunner()


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    write_phantoms(out, 30, seed=0, fmt="png", config=PhantomConfig(size=64))
    return out


@pytest.fixture(scope="module")
def llm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("llm")
    tokenizer = train_tiny_tokenizer()
    torch.manual_seed(0)
    tiny_llm(tokenizer).save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def _model_config(aligner: str = "qformer") -> dict[str, Any]:
    config = tiny_config(aligner, "vit").to_dict()  # type: ignore[arg-type]
    config["aligner"]["qformer"]["use_qformer_text_input"] = True
    return config


def _run(
    phantoms: Path, llm: Path, out: Path, aligner: str = "qformer", **extra: Any
) -> dict[str, Any]:
    return {
        "seed": 0,
        "output_dir": str(out),
        "device": "cpu",
        "data": {"kind": "phantoms", "path": str(phantoms), "val_fraction": 0.2,
                 "test_fraction": 0.1},
        "model": {"llm_dir": str(llm), "config": _model_config(aligner)},
        "defaults": {"batch_size": 4, "max_steps": 2, "checkpoint_every": 1, "log_every": 1,
                     "bf16": "off"},
        "stages": {"instruct": {"mix": {"correction": 1.0, "findings_qa_binary": 1.0}}},
        **extra,
    }


def test_every_stage_trains_packages_and_resumes(
    phantom_dir: Path, llm_dir: Path, tmp_path: Path
) -> None:
    run = parse_training_config(_run(phantom_dir, llm_dir, tmp_path / "run"))
    ctx, metrics, bundle = train(run, tmp_path / "bundle", progress=False)
    assert list(metrics) == ["classifier", "alignment", "report", "instruct"]
    for stage in metrics:
        stage_dir = tmp_path / "run" / stage
        assert (stage_dir / "loss.png").is_file() and (stage_dir / "loss.csv").is_file()
        assert load_checkpoint(stage_dir / "checkpoint.pt", stage).done
    assert {"itc_loss", "itm_loss", "caption_loss"} <= {
        key.removeprefix("val_") for key in metrics["alignment"]
    }
    # The bundle is a product bundle: verified, with both adapters and tuned thresholds.
    assert bundle is not None
    manifest = load_manifest(bundle)
    assert set(manifest.adapters) == {"report", "instruct"}
    assert manifest.thresholds == ctx.thresholds
    assert manifest.metrics is not None and "classifier" in manifest.metrics["validation"]
    # ... and with the n-gram table of the report targets, for lookup decoding: the
    # table continues a target's opening the way the target goes on.
    model = ChestXrayVLM.from_bundle(bundle, RuntimeOptions(device="cpu"))
    assert manifest.lookup_table is not None and model.lookup is not None
    target = ctx.tokenizer.encode(ctx.splits["train"][0].report, add_special_tokens=False)
    assert model.lookup.table.propose(target[:3], 2) != []
    row = next(iter(ctx.splits["test"] or ctx.splits["val"]))
    from training.engine.images import preprocess_file

    draft = model.generate_report([preprocess_file(row.images[0], model.config.preprocess)])
    assert len(draft.findings) == 14

    # Resuming a finished run reloads every stage instead of training it again.
    again = parse_training_config(_run(phantom_dir, llm_dir, tmp_path / "run"))
    ctx2, _, _ = train(again, None, resume=True, progress=False)
    assert ctx2.thresholds == ctx.thresholds
    for a, b in zip(ctx.tower.parameters(), ctx2.tower.parameters(), strict=True):
        torch.testing.assert_close(a.cpu(), b.cpu())


def test_linear_aligner_trains_its_projector_through_the_llm(
    phantom_dir: Path, llm_dir: Path, tmp_path: Path
) -> None:
    run = parse_training_config(
        _run(phantom_dir, llm_dir, tmp_path / "run", aligner="linear",
             run_stages=["alignment"])
    )
    ctx = build_context(run, progress=False)
    before = [p.detach().clone() for p in ctx.tower.aligner.parameters()]
    metrics = run_alignment_stage(ctx)
    after = list(ctx.tower.aligner.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert "val_loss" in metrics


def test_qformer_starts_from_bert_weights(tmp_path: Path) -> None:
    config = tiny_config("qformer", "vit")
    config.aligner.qformer.update(
        hidden_size=32, num_attention_heads=2, intermediate_size=64, num_hidden_layers=2,
        use_qformer_text_input=True,
    )
    from inference import VisionTower

    tower = VisionTower(config)
    aligner = tower.aligner
    assert isinstance(aligner, QFormerAligner)
    bert = BertModel(
        BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=64, max_position_embeddings=64)
    )
    bert.save_pretrained(str(tmp_path / "bert"))
    heads = AlignmentHeads(50, 32, 16, 8)
    copied = init_qformer_from_bert(aligner, heads, tmp_path / "bert")
    assert copied > 0
    layer = aligner.qformer.encoder.layer[1]
    source = bert.encoder.layer[1]
    torch.testing.assert_close(layer.attention.attention.query.weight,
                               source.attention.self.query.weight)
    torch.testing.assert_close(layer.intermediate_query.dense.weight,
                               source.intermediate.dense.weight)
    torch.testing.assert_close(layer.output.dense.weight, source.output.dense.weight)
    torch.testing.assert_close(heads.word_embeddings.weight, bert.embeddings.word_embeddings.weight)
    torch.testing.assert_close(heads.position_embeddings.weight,
                               bert.embeddings.position_embeddings.weight[:16])


def test_train_command_names_a_bad_key(tmp_path: Path) -> None:
    run_file = tmp_path / "run.json"
    run_file.write_text(json.dumps({"data": {"path": "x"}, "model": {"llm_dir": "y"},
                                    "stages": {"report": {"lora_rank": 8}}}))
    result = runner.invoke(app, ["train", "--run", str(run_file)])
    assert result.exit_code == 2
    assert "stages.report.lora_rank" in result.output


def test_evaluate_command_prints_every_metric(
    phantom_dir: Path, tiny_bundle: Path
) -> None:
    result = runner.invoke(
        app,
        ["evaluate", "--model", str(tiny_bundle), "--data", str(phantom_dir), "--limit", "4",
         "--corrections", "2", "--json"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # logs go to stderr
    assert report["n_studies"] == 4
    assert {"f1_macro", "f1_micro", "precision_macro", "recall_micro"} <= set(report["ce"])
    assert {"bleu1", "bleu4", "rouge_l"} <= set(report["nlg"])
    assert report["correction"]["n_examples"] == 2
    assert 0.0 <= report["correction"]["success"] <= 1.0
    # the success of missed findings added and false findings removed make up the whole
    kinds = report["correction"]["success_by_kind"].values()
    assert sum(k["n_errors"] for k in kinds) == report["correction"]["n_errors"]
    assert sum(k["success"] * k["n_errors"] for k in kinds) == pytest.approx(
        report["correction"]["success"] * report["correction"]["n_errors"]
    )
    # reports scored against their prompt's findings as well as against the references
    assert 0.0 <= report["faithfulness_ce"]["f1_macro"] <= 1.0


def test_a_model_without_findings_head_is_evaluated_on_its_reports_alone(
    phantom_dir: Path, llava_bundle: Path
) -> None:
    args = ["evaluate", "--model", str(llava_bundle), "--data", str(phantom_dir), "--limit",
            "2", "--corrections", "0"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classifier_ce"] is None and report["faithfulness_ce"] is None
    assert 0.0 <= report["ce"]["f1_macro"] <= 1.0  # its reports, read by the labeler
    table = runner.invoke(app, args)
    assert table.exit_code == 0 and "no findings head" in table.output


def test_evaluate_command_refuses_a_missing_dataset(tiny_bundle: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["evaluate", "--model", str(tiny_bundle), "--data", str(tmp_path / "none")]
    )
    assert result.exit_code == 2 and "error" in result.output
