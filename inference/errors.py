"""Exceptions raised by the :mod:`inference` package.

Every domain failure derives from :class:`InferenceError`, so callers (the DICOM node, the
command line) can catch one type and report the message, which always says what was wrong
and, where a file is involved, which file.
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of every error raised by :mod:`inference`."""


class PreprocessingError(InferenceError):
    """A DICOM dataset cannot be turned into model input (no pixels, bad photometry, ...)."""


class BundleError(InferenceError):
    """A model bundle is missing, malformed or fails its integrity check."""


class BundleIntegrityError(BundleError):
    """A file of a model bundle does not match the checksum recorded in its manifest."""


class CheckpointError(BundleError):
    """A published checkpoint cannot be imported: a file is missing, not the expected
    format, or lacks a key or has a shape the model needs; the message names the file and
    the key."""


class ConfigError(InferenceError):
    """A model configuration value is invalid; the message names the key."""


class RuntimeUnavailableError(InferenceError):
    """A required runtime (ONNX Runtime, a CUDA provider) is not installed."""
