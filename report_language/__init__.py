"""Report language: what a chest X-ray report says, in one home.

The CheXpert labels and their values (:mod:`report_language.labels`), the rule-based labeler
that reads the 14 findings out of report text (:mod:`report_language.labeler`), the findings
a reader's correction states (:mod:`report_language.stated_findings`), and the report's
sections (:mod:`report_language.sections`). The evaluation, the training data, the model's
prompts, the SR writer and the node's coded findings all read reports through this package,
so they agree. It imports none of the project's other packages.
"""

from report_language.labeler import (
    Mention,
    extract_mentions,
    label_report,
    label_reports,
    split_sentences,
)
from report_language.labels import CHEXPERT_LABELS, NEGATIVE, NO_FINDING, POSITIVE, UNCERTAIN
from report_language.sections import ReportSections, clean_text, format_report, parse_report
from report_language.stated_findings import (
    apply_stated_findings,
    choose_correction,
    stated_findings,
    unmet_statements,
)

__all__ = [
    "CHEXPERT_LABELS",
    "NEGATIVE",
    "NO_FINDING",
    "POSITIVE",
    "UNCERTAIN",
    "Mention",
    "ReportSections",
    "apply_stated_findings",
    "choose_correction",
    "clean_text",
    "extract_mentions",
    "format_report",
    "label_report",
    "label_reports",
    "parse_report",
    "split_sentences",
    "stated_findings",
    "unmet_statements",
]
