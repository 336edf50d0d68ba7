"""The ``dicom_node`` command line, one module per command group.

* :mod:`._app`: the Typer apps, the console, the ``--config`` option, settings loading,
  errors that exit, the stop event of long-running commands;
* :mod:`.model`: ``model init|verify|info``, ``infer``, ``phantoms``, ``config check``;
* :mod:`.node`: ``serve``, ``worker``, ``status``;
* :mod:`.amend`: ``ask``, ``amend``, ``api``;
* :mod:`.registry`: ``model list|register|promote|rollback``, ``retrain``;
* :mod:`.training`: ``train``, ``evaluate``, ``model build-demo``.

Each command module registers its commands on the apps of :mod:`._app` when imported, and
imports nothing but :mod:`._app` from this package, so any of them may be imported first.
"""

from __future__ import annotations

from dicom_node.cli import amend, model, node, registry, training  # noqa: F401 - register the commands
from dicom_node.cli._app import app


def main() -> None:
    """Console entry point."""
    app()


__all__ = ["app", "main"]
