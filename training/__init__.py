"""Staged fine-tuning of the chest X-ray vision-language model.

The training stages (findings classifier, alignment, report LoRA, instruct LoRA) import the
model from :mod:`inference`; nothing in :mod:`inference` imports from here.
"""

__all__: list[str] = []
