"""The four training stages, run in order by :mod:`training.recipes.pipeline`."""

from training.stages.alignment import AlignmentHeads, init_qformer_from_bert, run_alignment_stage
from training.stages.classifier import (
    f1_scores,
    pos_weights,
    predict_probabilities,
    run_classifier_stage,
    tune_thresholds,
)
from training.stages.lora import run_instruct_stage, run_report_stage

__all__ = [
    "AlignmentHeads",
    "f1_scores",
    "init_qformer_from_bert",
    "pos_weights",
    "predict_probabilities",
    "run_alignment_stage",
    "run_classifier_stage",
    "run_instruct_stage",
    "run_report_stage",
    "tune_thresholds",
]
