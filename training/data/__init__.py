"""Dataset loaders and patient-level splits.

Three loaders turn a dataset on disk into :class:`~training.records.StudyRecord` objects:

* :func:`load_mimic_cxr`: the MIMIC-CXR-JPG 2.0.0 layout (metadata and CheXpert tables,
  ``files/`` tree) with the MIMIC-CXR free-text reports;
* :func:`load_dicom_folder`: a folder of DICOM studies with a reports CSV;
* :func:`load_phantom_csv`: the phantom generator's ``phantoms.csv``.

:func:`split_records` then assigns whole patients to train, validation and test. Malformed
input raises :class:`~training.errors.DatasetError` naming the file, row and column.
"""

from __future__ import annotations

from report_language.sections import SECTION_HEADERS, ReportSections, parse_report
from training.data._tables import FRONTAL_VIEWS, UNKNOWN_VIEW
from training.data.dicom_folder import KEY_COLUMNS, KeyColumn, Labeler, load_dicom_folder
from training.data.mimic import (
    load_mimic_cxr,
    load_mimic_split,
    mimic_image_path,
    mimic_report_path,
)
from training.data.phantoms import PHANTOM_COLUMNS, load_phantom_csv
from training.data.splits import (
    Split,
    SplitName,
    normalise_split_name,
    split_records,
    subject_fraction,
)

__all__ = [
    "FRONTAL_VIEWS",
    "KEY_COLUMNS",
    "KeyColumn",
    "Labeler",
    "PHANTOM_COLUMNS",
    "ReportSections",
    "SECTION_HEADERS",
    "Split",
    "SplitName",
    "UNKNOWN_VIEW",
    "load_dicom_folder",
    "load_mimic_cxr",
    "load_mimic_split",
    "load_phantom_csv",
    "mimic_image_path",
    "mimic_report_path",
    "normalise_split_name",
    "parse_report",
    "split_records",
    "subject_fraction",
]
