"""Alembic environment: runs on the connection :meth:`Database.create_all` passes in."""

from __future__ import annotations

from alembic import context

import dicom_node.store.dialog  # noqa: F401  (registers the dialog tables)
import dicom_node.store.registry  # noqa: F401  (registers the registry tables)
from dicom_node.store.models import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
