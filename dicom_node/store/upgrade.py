"""Bring an existing database's state CHECK constraints up to the enums of this release.

State columns (job states, report kinds, message kinds, ...) are VARCHARs with a CHECK
constraint listing the allowed values (:func:`dicom_node.store.models._state_column`), so a
release that adds a value, such as the ``addendum`` report kind, needs no type migration, but
a database created by an earlier release still refuses the new value.
An Alembic revision that adds a value calls :func:`widen_state_checks`, which rewrites each
such constraint that lacks a value. Values are only ever added: every row
already stored satisfies the widened constraint.

* PostgreSQL: ``ALTER TABLE ... DROP CONSTRAINT``, ``ADD CONSTRAINT`` in one transaction.
* SQLite: the table's stored ``CREATE TABLE`` text is updated in place with
  ``PRAGMA writable_schema``, the procedure SQLite documents for changes that do not alter
  the stored data ("Making Other Kinds Of Table Schema Changes", sqlite.org/lang_altertable),
  followed by ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from sqlalchemy import Connection, Enum, text

from dicom_node.errors import DatabaseError
from dicom_node.store.models import Base

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StateCheck:
    """The CHECK constraint of one state column, as the models declare it."""

    table: str
    column: str
    name: str
    values: tuple[str, ...]

    def sql(self) -> str:
        """The constraint's SQL body: ``<column> IN ('a', 'b')``."""
        listed = ", ".join(f"'{value}'" for value in self.values)
        return f"{self.column} IN ({listed})"


def declared_checks() -> list[StateCheck]:
    """Every state column's CHECK constraint, as this release declares it."""
    checks = []
    for table in Base.metadata.sorted_tables:
        for column in table.columns:
            kind = column.type
            if isinstance(kind, Enum) and kind.create_constraint and kind.name:
                checks.append(StateCheck(table.name, column.name, kind.name, tuple(kind.enums)))
    return checks


def _listed_values(body: str) -> set[str]:
    return set(re.findall(r"'([^']*)'", body))


def _sqlite_upgrade(connection: Connection, check: StateCheck) -> bool:
    create = connection.execute(
        text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :name"),
        {"name": check.table},
    ).scalar()
    if create is None:
        return False
    pattern = re.compile(
        rf"CONSTRAINT {re.escape(check.name)} CHECK \({re.escape(check.column)} IN \(([^)]*)\)\)"
    )
    match = pattern.search(create)
    if match is None or set(check.values) <= _listed_values(match.group(1)):
        return False
    widened = create[: match.start()] + f"CONSTRAINT {check.name} CHECK ({check.sql()})" + (
        create[match.end():]
    )
    version = int(connection.execute(text("PRAGMA schema_version")).scalar() or 0)
    connection.execute(text("PRAGMA writable_schema = ON"))
    try:
        connection.execute(
            text("UPDATE sqlite_master SET sql = :sql WHERE type = 'table' AND name = :name"),
            {"sql": widened, "name": check.table},
        )
        connection.execute(text(f"PRAGMA schema_version = {version + 1}"))
    finally:
        connection.execute(text("PRAGMA writable_schema = OFF"))
    return True


def _postgresql_upgrade(connection: Connection, check: StateCheck) -> bool:
    rows = connection.execute(
        text(
            "SELECT pg_get_constraintdef(c.oid) FROM pg_constraint c "
            "JOIN pg_class t ON c.conrelid = t.oid "
            "WHERE t.relname = :table AND c.conname = :name AND c.contype = 'c' "
            "AND t.relnamespace = to_regnamespace(current_schema())::oid"
        ),
        {"table": check.table, "name": check.name},
    ).scalars().all()
    if not rows or set(check.values) <= _listed_values(rows[0]):
        return False
    connection.execute(
        text(
            f'ALTER TABLE "{check.table}" DROP CONSTRAINT "{check.name}", '
            f'ADD CONSTRAINT "{check.name}" CHECK ({check.sql()})'
        )
    )
    return True


def widen_state_checks(connection: Connection) -> list[str]:
    """Add the values this release knows to each state column's CHECK constraint.

    Run by the Alembic revision that adds a state value (``0002_report_addenda``), inside
    its transaction.

    Parameters
    ----------
    connection
        A connection to the node's database (SQLite or PostgreSQL), in a transaction.

    Returns
    -------
    list of str
        ``table.column`` of each constraint that was widened.

    Raises
    ------
    DatabaseError
        When SQLite's integrity check fails after the change.
    """
    backend = connection.dialect.name
    upgrade = _sqlite_upgrade if backend == "sqlite" else _postgresql_upgrade
    widened = [
        f"{check.table}.{check.column}" for check in declared_checks() if upgrade(connection, check)
    ]
    if widened and backend == "sqlite":
        result = connection.execute(text("PRAGMA integrity_check")).scalar()
        if result != "ok":
            raise DatabaseError(
                f"the database failed its integrity check after an upgrade: {result}"
            )
    for name in widened:
        logger.info("database upgraded: %s accepts this release's values", name)
    return widened


__all__ = ["StateCheck", "declared_checks", "widen_state_checks"]
