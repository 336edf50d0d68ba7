"""Priority: ``studies.urgent`` (a reader's mark) and ``worklist_entries.priority`` (the
RIS's Requested Procedure Priority); urgent and STAT studies head the worklist.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN, also on SQLite: a batch (copy-and-move) rebuild of ``studies``
    # would cascade-delete the rows that reference it.
    op.add_column(
        "studies", sa.Column("urgent", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.add_column("worklist_entries", sa.Column("priority", sa.String(length=16), nullable=True))


def downgrade() -> None:
    op.drop_column("worklist_entries", "priority")
    op.drop_column("studies", "urgent")
