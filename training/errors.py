"""Exceptions raised by the training package."""

from __future__ import annotations


class TrainingError(Exception):
    """Base class of every error raised by :mod:`training`."""


class DatasetError(TrainingError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file."""


class TrainingConfigError(TrainingError):
    """A training configuration is invalid; the message names the key."""


class CheckpointError(TrainingError):
    """A checkpoint cannot be read or does not match the run it should resume."""


class EvaluationError(TrainingError):
    """An evaluation resource (nltk, WordNet, a BERTScore model) is missing; the message says
    which and how to install it."""
