"""Alembic migrations of the node's database (see :meth:`dicom_node.store.Database.create_all`).

``versions/0001_initial.py`` is the schema as releases before migrations created it;
later revisions change it. Add a revision for every change to the models, and a test in
``tests/node/test_migrations.py`` that the upgraded schema equals the models.
"""
