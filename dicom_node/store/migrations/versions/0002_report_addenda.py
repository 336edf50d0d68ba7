"""Report versions of kind ``addendum`` (an addendum to a signed report).

The state columns are VARCHARs with a CHECK constraint listing their values; this revision
widens every such constraint to the values the models declare (today: ``addendum`` in
``report_versions.kind``). See :mod:`dicom_node.store.upgrade` for how, per backend.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

from dicom_node.store.upgrade import widen_state_checks

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    widen_state_checks(op.get_bind())


def downgrade() -> None:
    # Values are only ever added; rows of kind 'addendum' would violate a narrower check.
    raise NotImplementedError("report addenda cannot be downgraded away")
