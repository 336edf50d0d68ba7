"""Exceptions raised by the :mod:`dicom_node` package."""

from __future__ import annotations


class NodeError(Exception):
    """Base class of every error raised by :mod:`dicom_node`."""


class SettingsError(NodeError):
    """A configuration value is invalid; the message names the key."""


class StudyInputError(NodeError):
    """Files given as one study cannot be used (none readable, several studies, ...)."""


class DatabaseError(NodeError):
    """The node's database cannot be opened, created or written."""


class SpoolError(NodeError):
    """A received instance cannot be written to the spool folder."""


class DiskFullError(SpoolError):
    """Writing would leave less free space than ``storage.min_free_bytes``."""


class ServiceError(NodeError):
    """A network service of the node cannot start (port in use, bad TLS files, ...)."""
