"""The schema as releases before migrations created it (``Base.metadata.create_all``).

A database those releases made is stamped with this revision (see
:meth:`dicom_node.store.Database.create_all`); a new one is created by it.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from dicom_node.store._types import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('model_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('bundle_path', sa.String(length=400), nullable=False),
    sa.Column('model_name', sa.String(length=64), nullable=False),
    sa.Column('original_version', sa.String(length=64), nullable=True),
    sa.Column('metrics_json', sa.Text(), nullable=False),
    sa.Column('source', sa.Enum('demo', 'retrain', 'imported', name='modelsource', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('parent_version', sa.String(length=64), nullable=True),
    sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('promoted_at', UTCDateTime(timezone=True), nullable=True),
    sa.Column('promoted_by', sa.String(length=64), nullable=True),
    sa.Column('previous_version', sa.String(length=64), nullable=True),
    sa.Column('promotion_note', sa.String(length=400), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('version')
    )
    op.create_index('uq_model_versions_one_active', 'model_versions', ['active'], unique=True, sqlite_where=sa.text('active'), postgresql_where=sa.text('active'))
    op.create_table('retrain_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stages', sa.String(length=64), nullable=False),
    sa.Column('since', UTCDateTime(timezone=True), nullable=True),
    sa.Column('state', sa.Enum('queued', 'running', 'done', 'failed', name='retrainstate', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('phase', sa.String(length=64), nullable=False),
    sa.Column('log_tail', sa.Text(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('candidate_version', sa.String(length=64), nullable=True),
    sa.Column('requested_by', sa.String(length=64), nullable=True),
    sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', UTCDateTime(timezone=True), nullable=True),
    sa.Column('updated_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_retrain_runs_state'), 'retrain_runs', ['state'], unique=False)
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=True),
    sa.Column('patient_key', sa.String(length=64), nullable=True),
    sa.Column('first_received_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_received_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('assembled_count', sa.Integer(), nullable=True),
    sa.Column('assembled_at', UTCDateTime(timezone=True), nullable=True),
    sa.Column('not_reportable_reason', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_instance_uid')
    )
    op.create_index(op.f('ix_studies_last_received_at'), 'studies', ['last_received_at'], unique=False)
    op.create_index(op.f('ix_studies_patient_key'), 'studies', ['patient_key'], unique=False)
    op.create_table('worklist_entries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('entry_key', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=64), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('patient_key', sa.String(length=64), nullable=True),
    sa.Column('requested_procedure_id', sa.String(length=64), nullable=True),
    sa.Column('requested_procedure_description', sa.Text(), nullable=True),
    sa.Column('indication', sa.Text(), nullable=True),
    sa.Column('indication_source', sa.Enum('reason', 'procedure', 'admitting', name='indicationsource', native_enum=False, create_constraint=True, length=16), nullable=True),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('scheduled_date', sa.String(length=8), nullable=True),
    sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('fetched_at', UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('entry_key')
    )
    op.create_index(op.f('ix_worklist_entries_accession_number'), 'worklist_entries', ['accession_number'], unique=False)
    op.create_index(op.f('ix_worklist_entries_fetched_at'), 'worklist_entries', ['fetched_at'], unique=False)
    op.create_index(op.f('ix_worklist_entries_study_instance_uid'), 'worklist_entries', ['study_instance_uid'], unique=False)
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=True),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('outcome', sa.Enum('ok', 'refused', 'failed', name='auditoutcome', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('status_code', sa.Integer(), nullable=False),
    sa.Column('detail', sa.String(length=300), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_audit_events_at'), 'audit_events', ['at'], unique=False)
    op.create_index(op.f('ix_audit_events_study_id'), 'audit_events', ['study_id'], unique=False)
    op.create_index(op.f('ix_audit_events_user'), 'audit_events', ['user'], unique=False)
    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=64), nullable=True),
    sa.Column('body_part', sa.String(length=64), nullable=True),
    sa.Column('view_position', sa.String(length=64), nullable=True),
    sa.Column('path', sa.String(length=400), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('calling_ae', sa.String(length=64), nullable=False),
    sa.Column('received_at', UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    op.create_index('ix_instances_study_received', 'instances', ['study_id', 'received_at'], unique=False)
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('instance_set_hash', sa.String(length=64), nullable=False),
    sa.Column('instance_count', sa.Integer(), nullable=False),
    sa.Column('instances_until', UTCDateTime(timezone=True), nullable=False),
    sa.Column('state', sa.Enum('queued', 'running', 'done', 'failed', 'superseded', name='jobstate', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', UTCDateTime(timezone=True), nullable=True),
    sa.Column('dispatched_at', UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_id', 'instance_set_hash', name='uq_jobs_study_instance_set')
    )
    op.create_index(op.f('ix_jobs_state'), 'jobs', ['state'], unique=False)
    op.create_table('proposals',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('question', 'correction', 'rewrite', 'summary', 'easy_language', name='messagekind', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('based_on_version', sa.Integer(), nullable=False),
    sa.Column('findings_text', sa.Text(), nullable=False),
    sa.Column('impression_text', sa.Text(), nullable=False),
    sa.Column('findings_json', sa.Text(), nullable=False),
    sa.Column('status', sa.Enum('open', 'accepted', 'rejected', name='proposalstatus', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('decided_by', sa.String(length=64), nullable=True),
    sa.Column('decided_at', UTCDateTime(timezone=True), nullable=True),
    sa.Column('accepted_version', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_proposals_status'), 'proposals', ['status'], unique=False)
    op.create_index('ix_proposals_study', 'proposals', ['study_id', 'id'], unique=False)
    op.create_table('dialog_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.Enum('user', 'assistant', name='messagerole', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('kind', sa.Enum('question', 'correction', 'rewrite', 'summary', 'easy_language', name='messagekind', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('based_on_version', sa.Integer(), nullable=True),
    sa.Column('proposal_id', sa.Integer(), nullable=True),
    sa.Column('author', sa.String(length=64), nullable=True),
    sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['proposal_id'], ['proposals.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_dialog_messages_study', 'dialog_messages', ['study_id', 'id'], unique=False)
    op.create_table('outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('sr_sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sr_path', sa.String(length=400), nullable=False),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('state', sa.Enum('pending', 'sending', 'sent', 'failed', name='outboxstate', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', UTCDateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sr_sop_instance_uid', 'destination', name='uq_outbox_sr_destination')
    )
    op.create_index(op.f('ix_outbox_next_attempt_at'), 'outbox', ['next_attempt_at'], unique=False)
    op.create_index(op.f('ix_outbox_state'), 'outbox', ['state'], unique=False)
    op.create_table('report_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('kind', sa.Enum('draft', 'amendment', 'edit', 'signoff', name='reportkind', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('predecessor_id', sa.Integer(), nullable=True),
    sa.Column('sr_sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sr_path', sa.String(length=400), nullable=False),
    sa.Column('findings_text', sa.Text(), nullable=False),
    sa.Column('impression_text', sa.Text(), nullable=False),
    sa.Column('findings_json', sa.Text(), nullable=False),
    sa.Column('indication', sa.Text(), nullable=True),
    sa.Column('model_name', sa.String(length=64), nullable=True),
    sa.Column('model_version', sa.String(length=64), nullable=True),
    sa.Column('author', sa.String(length=64), nullable=True),
    sa.Column('created_at', UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['predecessor_id'], ['report_versions.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sr_sop_instance_uid'),
    sa.UniqueConstraint('study_id', 'version', name='uq_report_versions_study_version')
    )


def downgrade() -> None:
    op.drop_table('report_versions')
    op.drop_index(op.f('ix_outbox_state'), table_name='outbox')
    op.drop_index(op.f('ix_outbox_next_attempt_at'), table_name='outbox')
    op.drop_table('outbox')
    op.drop_index('ix_dialog_messages_study', table_name='dialog_messages')
    op.drop_table('dialog_messages')
    op.drop_index('ix_proposals_study', table_name='proposals')
    op.drop_index(op.f('ix_proposals_status'), table_name='proposals')
    op.drop_table('proposals')
    op.drop_index(op.f('ix_jobs_state'), table_name='jobs')
    op.drop_table('jobs')
    op.drop_index('ix_instances_study_received', table_name='instances')
    op.drop_table('instances')
    op.drop_index(op.f('ix_audit_events_user'), table_name='audit_events')
    op.drop_index(op.f('ix_audit_events_study_id'), table_name='audit_events')
    op.drop_index(op.f('ix_audit_events_at'), table_name='audit_events')
    op.drop_table('audit_events')
    op.drop_index(op.f('ix_worklist_entries_study_instance_uid'), table_name='worklist_entries')
    op.drop_index(op.f('ix_worklist_entries_fetched_at'), table_name='worklist_entries')
    op.drop_index(op.f('ix_worklist_entries_accession_number'), table_name='worklist_entries')
    op.drop_table('worklist_entries')
    op.drop_index(op.f('ix_studies_patient_key'), table_name='studies')
    op.drop_index(op.f('ix_studies_last_received_at'), table_name='studies')
    op.drop_table('studies')
    op.drop_index(op.f('ix_retrain_runs_state'), table_name='retrain_runs')
    op.drop_table('retrain_runs')
    op.drop_index('uq_model_versions_one_active', table_name='model_versions', sqlite_where=sa.text('active'), postgresql_where=sa.text('active'))
    op.drop_table('model_versions')
