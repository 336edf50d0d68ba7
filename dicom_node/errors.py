"""Exceptions raised by the :mod:`dicom_node` package."""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error raised by :mod:`dicom_node`."""


class SettingsError(NodeError):
    """A configuration value is invalid; the message names the key."""


class StudyInputError(NodeError):
    """Files given as one study cannot be used (none readable, several studies, ...)."""
