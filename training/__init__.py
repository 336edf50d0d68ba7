"""Staged fine-tuning of the chest X-ray vision-language model.

The training stages (findings classifier, alignment, report LoRA, instruct LoRA) import the
model from :mod:`inference`; nothing in :mod:`inference` imports from here. Entry points:
:func:`training.recipes.pipeline.train` (a run file), :func:`training.evaluate.evaluate_bundle` and
:func:`training.recipes.demo.build_demo`.
"""

from training.errors import CheckpointError, DatasetError, TrainingConfigError, TrainingError
from training.records import StudyRecord

__all__ = [
    "CheckpointError",
    "DatasetError",
    "StudyRecord",
    "TrainingConfigError",
    "TrainingError",
]
