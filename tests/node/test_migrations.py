"""Schema migrations (Alembic) on SQLite and on the local PostgreSQL.

A new database is made by the migrations and must equal the models; a database an earlier
release made with ``create_all`` (no version table) is stamped and upgraded, its rows kept.
"""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from nodehelpers import T0, record
from sqlalchemy import inspect, select, text

import dicom_node.store.dialog  # noqa: F401  (the dialog tables)
import dicom_node.store.registry  # noqa: F401  (the registry tables)
from dicom_node.store import Database, ReportKind, ReportVersion, Study
from dicom_node.store.database import LEGACY_REVISION, MIGRATIONS
from dicom_node.store.models import Base


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    return config


def _revision(database: Database) -> str:
    with database.engine.connect() as connection:
        return str(connection.execute(text("SELECT version_num FROM alembic_version")).scalar())


def test_a_new_database_is_the_models_schema_at_the_newest_revision(
    database: Database,
) -> None:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert _revision(database) == head
    with database.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        differences = compare_metadata(context, Base.metadata)
    assert differences == []
    database.create_all()  # every start of the node: nothing left to do
    assert _revision(database) == head


def test_a_database_of_an_earlier_release_is_stamped_upgraded_and_keeps_its_rows(
    database: Database,
) -> None:
    # What releases before migrations created: revision 0001's schema, no version table.
    database.drop_all()
    config = _config()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, LEGACY_REVISION)
        connection.execute(text("DROP TABLE alembic_version"))
    database.record_instance(record("1.2.3.1"))
    with database.session() as session:
        study_id = session.scalars(select(Study.id)).one()

    def add(version: int, kind: ReportKind) -> None:
        with database.session() as session:
            session.add(ReportVersion(
                study_id=study_id, version=version, kind=kind,
                sr_sop_instance_uid=f"1.2.9.{version}", sr_path=f"{version}.dcm",
                findings_text="f", impression_text="i", findings_json="[]", created_at=T0))

    add(1, ReportKind.SIGNOFF)
    try:
        add(2, ReportKind.ADDENDUM)
    except Exception as exc:  # noqa: BLE001 - the old CHECK constraint refuses the kind
        assert "check" in str(exc).lower() or "constraint" in str(exc).lower()
    else:
        raise AssertionError("revision 0001 must refuse the addendum kind")

    database.create_all()  # the node's start

    assert "alembic_version" in inspect(database.engine).get_table_names()
    assert _revision(database) == ScriptDirectory.from_config(config).get_current_head()
    add(2, ReportKind.ADDENDUM)
    with database.session() as session:
        kinds = session.execute(text("SELECT kind FROM report_versions ORDER BY version"))
        assert [row[0] for row in kinds] == ["signoff", "addendum"]
        assert session.scalars(select(Study.id)).one() == study_id
