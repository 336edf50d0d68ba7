"""Synthetic chest phantoms: determinism, labels that match the pixels, DICOM, CSV and CLI."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dicom_node.cli import app
from inference.config import PreprocessConfig
from inference.preprocessing import dataset_to_display, preprocess_dataset, read_dicom
from report_language.labeler import label_report
from report_language.labels import CHEXPERT_LABELS
from training.phantoms import (
    CSV_COLUMNS,
    CSV_NAME,
    PATHOLOGIES,
    DicomVariant,
    Phantom,
    PhantomConfig,
    generate_phantom,
    iter_phantoms,
    phantom_dataset,
    subject_plan,
    write_phantoms,
)

SMALL = PhantomConfig(size=128)


@pytest.fixture(scope="module")
def sample() -> list[Phantom]:
    """120 phantoms at 192 px: enough for every finding to appear several times."""
    return list(iter_phantoms(11, 120, PhantomConfig(size=192)))


def _with(sample: list[Phantom], label: str, value: float = 1.0) -> list[Phantom]:
    found = [p for p in sample if p.labels[label] == value]
    assert found, f"no phantom with {label} = {value} in the sample"
    return found


def test_same_seed_same_phantom_other_seed_other_phantom() -> None:
    a, b = generate_phantom(4, 2, SMALL), generate_phantom(4, 2, SMALL)
    assert np.array_equal(a.image, b.image)
    assert a.labels == b.labels and a.report == b.report and a.findings == b.findings
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    c = generate_phantom(5, 2, SMALL)
    assert not np.array_equal(a.image, c.image)
    # Image i is the same whether drawn alone or as part of a run.
    assert np.array_equal(list(iter_phantoms(4, 3, SMALL))[2].image, a.image)


def test_written_dataset_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    write_phantoms(tmp_path / "a", 6, 1, config=SMALL, workers=1)
    write_phantoms(tmp_path / "b", 6, 1, config=SMALL, workers=2)
    write_phantoms(tmp_path / "c", 6, 2, config=SMALL, workers=1)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert len(files_a) == 7
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / CSV_NAME).read_bytes() != (tmp_path / "c" / CSV_NAME).read_bytes()


def test_cardiothoracic_ratio_from_masks_agrees_with_cardiomegaly(sample: list[Phantom]) -> None:
    for p in sample:
        ctr = p.measured_ctr()
        assert abs(ctr - p.ctr) < 0.03, (p.index, ctr, p.ctr)
        if p.labels["Cardiomegaly"] == 1.0:
            assert ctr > 0.53, (p.index, ctr)
        elif p.labels["Cardiomegaly"] != -1.0:
            assert ctr < 0.48, (p.index, ctr)
    assert len(_with(sample, "Cardiomegaly")) >= 10


def test_effusion_is_on_the_labelled_side_and_the_text_says_so(sample: list[Phantom]) -> None:
    for p in _with(sample, "Pleural Effusion"):
        (finding,) = [f for f in p.findings if f.label == "Pleural Effusion"]
        fluid = p.masks["Pleural Effusion"]
        in_right = (fluid & p.masks["right_lung"]).sum()  # patient right = viewer's left
        in_left = (fluid & p.masks["left_lung"]).sum()
        if finding.side == "right":
            assert in_right > 0 and in_left == 0
        elif finding.side == "left":
            assert in_left > 0 and in_right == 0
        else:
            assert in_left > 0 and in_right > 0
        assert finding.side in p.findings_text.lower() or (
            finding.side == "bilateral" and "both costophrenic" in p.findings_text)
        assert str(finding.severity) in p.findings_text.lower()
        # Fluid is denser than the aerated lung around it.
        lungs = p.masks["lungs"]
        assert p.image[fluid & lungs].mean() > p.image[lungs & ~fluid].mean() + 0.1


def test_findings_are_visible_where_their_masks_say(sample: list[Phantom]) -> None:
    for p in _with(sample, "Pneumothorax"):
        air = p.masks["Pneumothorax"]
        side = next(f.side for f in p.findings if f.label == "Pneumothorax")
        lung = p.masks[f"{side}_lung"]
        assert p.image[air].mean() < p.image[lung & ~air].mean(), p.index
    for label in ("Lung Lesion", "Consolidation", "Pneumonia", "Atelectasis"):
        for p in _with(sample, label):
            mask = p.masks[label] & p.masks["lungs"]
            rest = p.masks["lungs"] & ~mask
            assert p.image[mask].mean() > p.image[rest].mean() + 0.05, (label, p.index)
    for p in _with(sample, "Support Devices"):
        assert np.percentile(p.image[p.masks["Support Devices"]], 90) > 0.85, p.index


def test_labels_follow_chexpert_rules_and_match_the_report(sample: list[Phantom]) -> None:
    for p in sample:
        assert set(p.labels) == set(CHEXPERT_LABELS)
        assert all(v in (None, 1.0, 0.0, -1.0) for v in p.labels.values())
        abnormal = any(p.labels[x] in (1.0, -1.0) for x in PATHOLOGIES)
        assert p.labels["No Finding"] == (None if abnormal else 1.0)
        assert {f.label for f in p.findings} == {k for k, v in p.labels.items()
                                                 if v in (1.0, -1.0) and k != "No Finding"}
        # A rule-based CheXpert-style labeler recovers every label from the report.
        assert label_report(p.report) == dict(p.labels), p.report
    for label in PATHOLOGIES:
        assert _with(sample, label)


def test_subjects_have_one_to_three_studies() -> None:
    plan = subject_plan(0, 200)
    counts = np.bincount([s for s, _ in plan])
    assert counts.min() >= 1 and counts.max() <= 3 and (counts > 1).any()
    phantoms = list(iter_phantoms(0, 6, PhantomConfig(size=64)))
    for p, (subject, visit) in zip(phantoms, plan, strict=False):
        assert (p.subject_index, p.visit) == (subject, visit)
        assert p.subject_id.endswith(f"p{subject:05d}")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dicom3tools not installed")
@pytest.mark.parametrize(("modality", "photometric", "bits"),
                         [("CR", "MONOCHROME1", 15), ("DX", "MONOCHROME2", 12),
                          ("DX", "MONOCHROME1", 16)])
def test_dicom_files_validate(tmp_path: Path, modality: str, photometric: str,
                              bits: int) -> None:
    phantom = generate_phantom(0, 1, SMALL)
    ds = phantom_dataset(phantom, DicomVariant(modality, photometric, bits, 0.05, 0.9))  # type: ignore[arg-type]
    path = tmp_path / "image.dcm"
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True,
                            timeout=60)
    errors = [line for line in (result.stdout + result.stderr).splitlines()
              if line.startswith("Error")]
    assert not errors, errors
    back = read_dicom(path)
    assert back.Modality == modality and back.PhotometricInterpretation == photometric
    assert back.PatientName.family_name == "PHANTOM" and back.BitsStored == bits
    assert back.StudyInstanceUID == phantom_dataset(phantom).StudyInstanceUID


def test_monochrome1_file_preprocesses_to_dark_lungs(tmp_path: Path) -> None:
    phantom = generate_phantom(0, 1, SMALL)
    path = tmp_path / "m1.dcm"
    phantom_dataset(phantom, DicomVariant("CR", "MONOCHROME1", 14, 0.05, 0.9)).save_as(
        path, enforce_file_format=True)
    stored = read_dicom(path).pixel_array
    # Stored values are inverted: lungs high, mediastinum low ...
    assert stored[phantom.masks["lungs"]].mean() > stored[phantom.masks["mediastinum"]].mean()
    # ... and the display chain makes the lungs dark again.
    display = dataset_to_display(read_dicom(path), PreprocessConfig())
    assert np.abs(display - phantom.image).max() < 1e-3
    assert display[phantom.masks["lungs"]].mean() < 0.5 < display[
        phantom.masks["mediastinum"]].mean()
    assert preprocess_dataset(read_dicom(path), PreprocessConfig()).shape == (3, 224, 224)


runner = CliRunner()


def test_cli_writes_n_images_and_a_csv_with_n_rows(tmp_path: Path) -> None:
    out = tmp_path / "png"
    result = runner.invoke(app, ["phantoms", "--out", str(out), "--n", "5", "--seed", "2",
                                 "--size", "96", "--workers", "1"])
    assert result.exit_code == 0, result.output
    with (out / CSV_NAME).open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert len(rows) == 5 and len(list(out.rglob("*.png"))) == 5
    for row in rows:
        assert (out / row["path"]).is_file()
        assert row["ViewPosition"] in ("PA", "AP")
        assert row["report"].startswith("FINDINGS: ") and "\nIMPRESSION: " in row["report"]
        assert all(row[name] in ("", "1.0", "0.0", "-1.0") for name in CHEXPERT_LABELS)
    dcm = tmp_path / "dcm"
    result = runner.invoke(app, ["phantoms", "--out", str(dcm), "--n", "2", "--format",
                                 "dicom", "--size", "64", "--masks"])
    assert result.exit_code == 0, result.output
    assert len(list(dcm.rglob("*.dcm"))) == 2 and len(list(dcm.rglob("*_masks.npz"))) == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--n", "0"], "--n must be a positive number"),
    (["--n", "-3"], "--n must be a positive number"),
    (["--format", "jpeg"], "--format must be png or dicom"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--size", "8"], "size must be an integer >= 64"),
])
def test_cli_rejects_bad_arguments_without_a_traceback(tmp_path: Path, args: list[str],
                                                       message: str) -> None:
    result = runner.invoke(app, ["phantoms", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_to_overwrite_a_dataset(tmp_path: Path) -> None:
    args = ["phantoms", "--out", str(tmp_path), "--n", "1", "--size", "64"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


@pytest.mark.skipif(not os.environ.get("PHANTOM_PREVIEW"),
                    reason="visual check: set PHANTOM_PREVIEW=DIR to write one PNG per finding")
def test_write_preview_images_for_a_visual_check() -> None:
    from training.phantoms._writer import save_png

    out = Path(os.environ["PHANTOM_PREVIEW"])
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(PATHOLOGIES) | {"Support Devices", "No Finding"}
    for p in iter_phantoms(0, 400, PhantomConfig(size=512)):
        positive = [k for k, v in p.labels.items() if v == 1.0]
        if len(positive) == 1 and positive[0] in wanted:
            wanted.discard(positive[0])
            save_png(p.image, out / f"{positive[0].replace(' ', '_')}.png")
        if not wanted:
            break
