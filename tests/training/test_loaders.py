"""Dataset loaders (MIMIC-CXR-JPG layout, DICOM folder, phantom CSV), report parsing, splits."""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from report_language.labels import CHEXPERT_LABELS
from training.data import (
    load_dicom_folder,
    load_mimic_cxr,
    load_mimic_split,
    load_phantom_csv,
    mimic_image_path,
    mimic_report_path,
    parse_report,
    split_records,
    subject_fraction,
)
from training.errors import DatasetError
from training.records import StudyRecord

# --------------------------------------------------------------------------- helpers


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Mapping[str, object]]) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({name: row.get(name, "") for name in header})
    data = buffer.getvalue().encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def write_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), 128, dtype=np.uint8)).save(path)
    return path


def labels_row(**values: float) -> dict[str, object]:
    """CheXpert cells: the given values by label name (underscores for spaces), others blank."""
    row: dict[str, object] = {name: "" for name in CHEXPERT_LABELS}
    for key, value in values.items():
        row[key.replace("_", " ")] = value
    return row


MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough  // eval for pneumonia

 COMPARISON:  None.

 FINDINGS:

 The heart is mildly enlarged.  There is a small left pleural
 effusion.  No pneumothorax.

 IMPRESSION:

 Cardiomegaly and small left effusion.
"""


def make_mimic(root: Path, *, gz: bool = True, split: bool = True) -> Path:
    """Three subjects, four studies; study 50000004 has an impression-free, finding-free report."""
    ext = ".csv.gz" if gz else ".csv"
    images = [
        ("10000001", "50000001", "aaa-lat", "LATERAL"),
        ("10000001", "50000001", "aaa-pa", "PA"),
        ("10000001", "50000002", "bbb-ap", "AP"),
        ("10000002", "50000003", "ccc-ll", "LL"),
        ("11000003", "50000004", "ddd-pa", "PA"),
    ]
    write_csv(
        root / f"mimic-cxr-2.0.0-metadata{ext}",
        ["dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition"],
        [
            {"dicom_id": d, "subject_id": s, "study_id": st, "ViewPosition": v}
            for s, st, d, v in images
        ],
    )
    for subject, study, dicom, _ in images:
        write_jpeg(mimic_image_path(root, subject, study, dicom))
    write_csv(
        root / f"mimic-cxr-2.0.0-chexpert{ext}",
        ["subject_id", "study_id", *CHEXPERT_LABELS],
        [
            {"subject_id": "10000001", "study_id": "50000001",
             **labels_row(Cardiomegaly=1.0, Pleural_Effusion=1.0, Pneumothorax=0.0)},
            {"subject_id": "10000001", "study_id": "50000002", **labels_row(No_Finding=1.0)},
            {"subject_id": "10000002", "study_id": "50000003", **labels_row(Edema=-1.0)},
        ],
    )
    if split:
        write_csv(
            root / f"mimic-cxr-2.0.0-split{ext}",
            ["dicom_id", "study_id", "subject_id", "split"],
            [{"dicom_id": d, "study_id": st, "subject_id": s,
              "split": "test" if s == "10000002" else "validate" if s == "11000003" else "train"}
             for s, st, d, _ in images],
        )
    reports = {
        ("10000001", "50000001"): MIMIC_REPORT,
        ("10000001", "50000002"): "findings: Lungs are clear.\nimpression: No acute process.",
        ("10000002", "50000003"): "IMPRESSION:\n Possible mild edema.",
        ("11000003", "50000004"): "EXAMINATION: Chest\nCOMPARISON: none",
    }
    for (subject, study), text in reports.items():
        path = mimic_report_path(root / "reports", subject, study)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# --------------------------------------------------------------------------- reports


def test_parse_mimic_report_sections() -> None:
    sections = parse_report(MIMIC_REPORT)
    assert sections.indication == "___F with cough // eval for pneumonia"
    assert sections.findings == (
        "The heart is mildly enlarged. There is a small left pleural effusion. No pneumothorax."
    )
    assert sections.impression == "Cardiomegaly and small left effusion."


def test_parse_report_headers_case_insensitive_and_missing_sections() -> None:
    sections = parse_report("Clinical History: fever\nConclusion:\n  Normal chest.")
    assert sections.indication == "fever"
    assert sections.findings == ""
    assert sections.impression == "Normal chest."
    assert not parse_report("no sections at all").has_text
    # mixed-case "label:" inside the text is not a header
    assert parse_report("FINDINGS: Lines: right PICC in SVC.").findings == (
        "Lines: right PICC in SVC."
    )


# --------------------------------------------------------------------------- MIMIC


@pytest.mark.parametrize("gz", [True, False])
def test_mimic_loads_studies_frontal_first(
    tmp_path: Path, gz: bool, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_mimic(tmp_path, gz=gz)
    with caplog.at_level(logging.INFO, logger="training.data"):
        records = load_mimic_cxr(root, root / "reports")
    by_id = {record.study_id: record for record in records}
    assert sorted(by_id) == ["50000001", "50000002", "50000003"]  # 50000004 skipped
    assert "skipped 1 studies (no findings or impression)" in caplog.text
    assert "10000001" not in caplog.text  # no patient ids in the log
    first = by_id["50000001"]
    assert first.subject_id == "10000001"
    assert first.views == ("PA", "LATERAL")
    assert first.images[0].name == "aaa-pa.jpg"
    assert first.images[0] == root / "files/p10/p10000001/s50000001/aaa-pa.jpg"
    assert first.indication == "___F with cough // eval for pneumonia"
    assert first.impression == "Cardiomegaly and small left effusion."
    assert first.labels["Cardiomegaly"] == 1.0
    assert first.labels["Pneumothorax"] == 0.0
    assert first.labels["Atelectasis"] is None
    assert first.positive_findings() == ["Cardiomegaly", "Pleural Effusion"]
    assert by_id["50000003"].labels["Edema"] == -1.0
    assert by_id["50000003"].findings == ""


def test_mimic_without_laterals(tmp_path: Path) -> None:
    root = make_mimic(tmp_path)
    records = load_mimic_cxr(root, root / "reports", keep_lateral=False)
    assert {r.study_id for r in records} == {"50000001", "50000002"}  # 50000003 is LL only
    assert all(set(r.views) <= {"PA", "AP"} for r in records)


def test_mimic_missing_image_names_file(tmp_path: Path) -> None:
    root = make_mimic(tmp_path)
    missing = mimic_image_path(root, "10000001", "50000002", "bbb-ap")
    missing.unlink()
    with pytest.raises(DatasetError, match="bbb-ap.jpg"):
        load_mimic_cxr(root, root / "reports")
    assert load_mimic_cxr(root, root / "reports", check_images=False)


def test_mimic_bad_label_value_names_line_and_column(tmp_path: Path) -> None:
    root = make_mimic(tmp_path, gz=False)
    path = root / "mimic-cxr-2.0.0-chexpert.csv"
    path.write_text(path.read_text().replace("-1.0", "maybe"))
    with pytest.raises(DatasetError, match=r"chexpert.csv: row 4, column 'Edema' has 'maybe'"):
        load_mimic_cxr(root, root / "reports")


def test_mimic_missing_column_and_table(tmp_path: Path) -> None:
    root = make_mimic(tmp_path, gz=False)
    path = root / "mimic-cxr-2.0.0-metadata.csv"
    path.write_text(path.read_text().replace("dicom_id", "dicom"))
    with pytest.raises(DatasetError, match=r"metadata.csv: missing column\(s\) \['dicom_id'\]"):
        load_mimic_cxr(root, root / "reports")
    path.unlink()
    with pytest.raises(DatasetError, match="mimic-cxr-2.0.0-metadata.csv"):
        load_mimic_cxr(root, root / "reports")


def test_mimic_wrong_reports_dir_is_an_error(tmp_path: Path) -> None:
    root = make_mimic(tmp_path)
    with pytest.raises(DatasetError, match="no usable study"):
        load_mimic_cxr(root)  # reports are under root/reports, not root


def test_mimic_official_split_overrides_hash(tmp_path: Path) -> None:
    root = make_mimic(tmp_path)
    records = load_mimic_cxr(root, root / "reports")
    official = load_mimic_split(root)
    assert official["50000003"] == "test" and official["50000004"] == "val"
    split = split_records(records, 0.0, 0.0, seed=1, official=official)
    assert [r.study_id for r in split.test] == ["50000003"]
    assert [r.study_id for r in split.train] == ["50000001", "50000002"]
    assert load_mimic_split(make_mimic(tmp_path / "nosplit", split=False)) == {}


# --------------------------------------------------------------------------- DICOM folder


def write_dicom(
    path: Path, *, patient: str, study_uid: str, accession: str, view: str | None,
    image: bool = True,
) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")  # DX for presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = patient
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.AccessionNumber = accession
    ds.Modality = "DX"
    if view is not None:
        ds.ViewPosition = view
    if image:
        ds.Rows = ds.Columns = 4
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(16)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dicom_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "dicom"
    uids = {"s1": str(generate_uid()), "s2": str(generate_uid()), "s3": str(generate_uid())}
    write_dicom(folder / "a/1/lat.dcm", patient="P1", study_uid=uids["s1"], accession="ACC1",
                view="LL")
    write_dicom(folder / "a/1/front", patient="P1", study_uid=uids["s1"], accession="ACC1",
                view="PA")
    write_dicom(folder / "b/2.dcm", patient="P2", study_uid=uids["s2"], accession="ACC2",
                view=None)
    write_dicom(folder / "c/3.dcm", patient="P3", study_uid=uids["s3"], accession="ACC3",
                view="AP")
    write_dicom(folder / "a/sr.dcm", patient="P1", study_uid=uids["s1"], accession="ACC1",
                view=None, image=False)
    (folder / "README.txt").write_text("not DICOM")
    return folder, uids


def test_dicom_folder_with_label_columns(
    tmp_path: Path, dicom_folder: tuple[Path, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    folder, uids = dicom_folder
    reports = write_csv(
        tmp_path / "reports.csv",
        ["StudyInstanceUID", "findings", "impression", "indication", *CHEXPERT_LABELS],
        [
            {"StudyInstanceUID": uids["s1"], "findings": "Small right pneumothorax.",
             "impression": "Pneumothorax.", "indication": "trauma",
             **labels_row(Pneumothorax=1.0)},
            {"StudyInstanceUID": uids["s2"], "findings": "Clear lungs.", "impression": "",
             **labels_row(No_Finding=1.0)},
        ],
    )
    with caplog.at_level(logging.INFO, logger="training.data"):
        records = load_dicom_folder(folder, reports)
    assert "skipped 1 studies (no report row)" in caplog.text
    assert "P1" not in caplog.text
    by_id = {r.study_id: r for r in records}
    assert set(by_id) == {uids["s1"], uids["s2"]}
    first = by_id[uids["s1"]]
    assert first.subject_id == "P1"
    assert first.views == ("PA", "LL")  # the SR-like object without Rows is passed over
    assert first.images[0].name == "front"
    assert first.indication == "trauma"
    assert first.labels["Pneumothorax"] == 1.0
    assert by_id[uids["s2"]].views == ("UNKNOWN",)
    assert by_id[uids["s2"]].indication is None
    frontal = load_dicom_folder(folder, reports, keep_lateral=False)
    assert {r.study_id: r.views for r in frontal} == {uids["s1"]: ("PA",)}


def test_dicom_folder_by_accession_uses_the_labeler(
    tmp_path: Path, dicom_folder: tuple[Path, dict[str, str]]
) -> None:
    folder, uids = dicom_folder
    reports = write_csv(
        tmp_path / "reports.csv",
        ["AccessionNumber", "findings", "impression"],
        [{"AccessionNumber": "ACC3", "findings": "Large left pleural effusion.",
          "impression": "Effusion."}],
    )
    seen: list[str] = []

    def labeler(text: str) -> dict[str, float | None]:
        seen.append(text)
        return {"Pleural Effusion": 1.0}

    [record] = load_dicom_folder(folder, reports, labeler=labeler)
    assert record.study_id == uids["s3"] and record.subject_id == "P3"
    assert seen == ["FINDINGS: Large left pleural effusion.\nIMPRESSION: Effusion."]
    assert record.labels["Pleural Effusion"] == 1.0 and record.labels["Edema"] is None


def test_dicom_folder_bad_input(tmp_path: Path, dicom_folder: tuple[Path, dict[str, str]]) -> None:
    folder, uids = dicom_folder
    no_key = write_csv(tmp_path / "r1.csv", ["study", "findings", "impression"], [])
    with pytest.raises(DatasetError, match="r1.csv: missing key column"):
        load_dicom_folder(folder, no_key)
    no_findings = write_csv(tmp_path / "r2.csv", ["StudyInstanceUID", "impression"], [])
    with pytest.raises(DatasetError, match=r"r2.csv: missing column\(s\) \['findings'\]"):
        load_dicom_folder(folder, no_findings)
    some_labels = write_csv(
        tmp_path / "r3.csv", ["StudyInstanceUID", "findings", "impression", "Edema"], []
    )
    with pytest.raises(DatasetError, match="r3.csv: has some CheXpert columns"):
        load_dicom_folder(folder, some_labels)
    bad_value = write_csv(
        tmp_path / "r4.csv",
        ["StudyInstanceUID", "findings", "impression", *CHEXPERT_LABELS],
        [{"StudyInstanceUID": uids["s1"], "findings": "x", "impression": "",
          **labels_row(Edema=2.0)}],
    )
    with pytest.raises(DatasetError, match="r4.csv: row 2, column 'Edema' has '2.0'"):
        load_dicom_folder(folder, bad_value)
    write_dicom(folder / "z.dcm", patient="", study_uid=uids["s1"], accession="ACC1", view="PA")
    good = write_csv(tmp_path / "r5.csv", ["StudyInstanceUID", "findings", "impression"], [])
    with pytest.raises(DatasetError, match="z.dcm: DICOM image without PatientID"):
        load_dicom_folder(folder, good, labeler=lambda text: {})


# --------------------------------------------------------------------------- phantoms


PHANTOM_HEADER = [
    "subject_id", "study_id", "dicom_id", "path", "ViewPosition", "indication", "findings",
    "impression", "report", *CHEXPERT_LABELS,
]


def phantom_rows(tmp_path: Path) -> list[dict[str, object]]:
    study = {"subject_id": "ph1", "study_id": "st1", "indication": "cough",
             "findings": "Small left effusion.", "impression": "Effusion.",
             "report": "FINDINGS: Small left effusion.\nIMPRESSION: Effusion.",
             **labels_row(Pleural_Effusion=1.0, Pneumothorax=0.0)}
    normal = {"subject_id": "ph2", "study_id": "st2", "indication": "",
              "findings": "Clear lungs.", "impression": "", "report": "FINDINGS: Clear lungs.",
              **labels_row(No_Finding=1.0)}
    write_jpeg(tmp_path / "images/st1_lat.png")
    write_jpeg(tmp_path / "images/st1_pa.png")
    write_jpeg(tmp_path / "images/st2_ap.png")
    return [
        {**study, "dicom_id": "d1", "path": "images/st1_lat.png", "ViewPosition": "LATERAL"},
        {**study, "dicom_id": "d2", "path": "images/st1_pa.png", "ViewPosition": "PA"},
        {**normal, "dicom_id": "d3", "path": "images/st2_ap.png", "ViewPosition": "AP"},
    ]


def test_phantom_csv_groups_rows_by_study(tmp_path: Path) -> None:
    csv_path = write_csv(tmp_path / "phantoms.csv", PHANTOM_HEADER, phantom_rows(tmp_path))
    first, second = load_phantom_csv(csv_path)
    assert first.study_id == "st1" and first.subject_id == "ph1"
    assert first.views == ("PA", "LATERAL")
    assert first.images == (tmp_path / "images/st1_pa.png", tmp_path / "images/st1_lat.png")
    assert first.report == "FINDINGS: Small left effusion.\nIMPRESSION: Effusion."
    assert first.labels["Pleural Effusion"] == 1.0 and first.labels["Pneumothorax"] == 0.0
    assert second.indication is None and second.impression == ""
    assert [r.views for r in load_phantom_csv(csv_path, keep_lateral=False)] == [("PA",), ("AP",)]


def test_phantom_csv_errors(tmp_path: Path) -> None:
    rows = phantom_rows(tmp_path)
    bad = [*rows[:2], {**rows[2], "Edema": "yes"}]
    path = write_csv(tmp_path / "bad.csv", PHANTOM_HEADER, bad)
    with pytest.raises(DatasetError, match="bad.csv: row 4, column 'Edema' has 'yes'"):
        load_phantom_csv(path)
    disagree = [rows[0], {**rows[1], "findings": "Other text."}]
    path = write_csv(tmp_path / "disagree.csv", PHANTOM_HEADER, disagree)
    with pytest.raises(DatasetError, match="row 3, column 'findings' disagrees with row 2"):
        load_phantom_csv(path)
    missing = [{**rows[0], "path": "images/nope.png"}]
    path = write_csv(tmp_path / "missing.csv", PHANTOM_HEADER, missing)
    with pytest.raises(DatasetError, match="missing.csv: row 2, column 'path'.*nope.png"):
        load_phantom_csv(path)
    path = write_csv(tmp_path / "nolabels.csv", PHANTOM_HEADER[:9], rows)
    with pytest.raises(DatasetError, match=r"nolabels.csv: missing column\(s\) \['Atelectasis'"):
        load_phantom_csv(path)
    with pytest.raises(DatasetError, match="absent.csv: file not found"):
        load_phantom_csv(tmp_path / "absent.csv")


# --------------------------------------------------------------------------- splits


def synthetic_records(subjects: int) -> list[StudyRecord]:
    records = []
    for subject in range(subjects):
        for study in range(1 + subject % 3):
            records.append(
                StudyRecord(
                    subject_id=f"subj{subject}", study_id=f"st{subject}-{study}",
                    images=(Path(f"{subject}-{study}.png"),), views=("PA",),
                    findings="Clear lungs.", impression="", indication=None,
                )
            )
    return records


def test_split_by_patient_with_fractions() -> None:
    records = synthetic_records(3000)
    split = split_records(records, val_fraction=0.1, test_fraction=0.2, seed=7)
    train, val, test = split
    assert len(train) + len(val) + len(test) == len(records)
    subjects = [{r.subject_id for r in part} for part in (train, val, test)]
    assert not subjects[0] & subjects[1] and not subjects[0] & subjects[2]
    assert not subjects[1] & subjects[2]
    total = sum(len(s) for s in subjects)
    assert abs(len(subjects[1]) / total - 0.1) < 0.02
    assert abs(len(subjects[2]) / total - 0.2) < 0.025


def test_split_is_deterministic_and_seeded() -> None:
    records = synthetic_records(200)
    first = split_records(records, 0.2, 0.2, seed=3)
    assert first == split_records(list(reversed(records))[::-1], 0.2, 0.2, seed=3)
    assert first != split_records(records, 0.2, 0.2, seed=4)
    # hashlib-based: the same value in every interpreter run
    assert subject_fraction("subj1", 0) == pytest.approx(
        int.from_bytes(__import__("hashlib").sha256(b"0\x00subj1").digest()[:8], "big") / 2**64
    )


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        split_records([], val_fraction=-0.1)
    with pytest.raises(ValueError, match="must be < 1"):
        split_records([], val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="unknown split"):
        split_records(synthetic_records(1), official={"st0-0": "holdout"})
