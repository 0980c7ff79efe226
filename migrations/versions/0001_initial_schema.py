"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import farm.models

revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('models',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('source', sa.String(length=1024), nullable=False),
    sa.Column('family', sa.String(length=16), nullable=False),
    sa.Column('dtype', sa.String(length=8), nullable=True),
    sa.Column('revision', sa.String(length=64), nullable=True),
    sa.Column('vram_gb', sa.Float(), nullable=False),
    sa.Column('default_steps', sa.Integer(), nullable=False),
    sa.Column('default_guidance', sa.Float(), nullable=False),
    sa.Column('weights_sha256', sa.String(length=64), nullable=True),
    sa.Column('files', farm.models.JSONType, nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_models'))
    )
    op.create_table('teams',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_teams')),
    sa.UniqueConstraint('name', name=op.f('uq_teams_name'))
    )
    op.create_table('workers',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('queue', sa.String(length=255), nullable=False),
    sa.Column('device', sa.String(length=16), nullable=False),
    sa.Column('device_name', sa.String(length=255), nullable=False),
    sa.Column('vram_total_gb', sa.Float(), nullable=False),
    sa.Column('vram_free_gb', sa.Float(), nullable=False),
    sa.Column('loaded_models', farm.models.JSONType, nullable=False),
    sa.Column('serves_models', farm.models.JSONType, nullable=True),
    sa.Column('families', farm.models.JSONType, nullable=False),
    sa.Column('max_pixels', sa.Integer(), nullable=False),
    sa.Column('capacity', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('software', farm.models.JSONType, nullable=False),
    sa.Column('started_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_heartbeat_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers'))
    )
    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('disabled_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_users_team_id_teams'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('name', name=op.f('uq_users_name'))
    )
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('last_used_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_tokens_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_tokens')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_api_tokens_token_hash'))
    )
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_tokens_user_id'), ['user_id'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Uuid(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.String(length=128), nullable=False),
    sa.Column('request', farm.models.JSONType, nullable=False),
    sa.Column('params', farm.models.JSONType, nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('num_images', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('worker_id', sa.String(length=128), nullable=True),
    sa.Column('lease_expires_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('excluded_workers', farm.models.JSONType, nullable=False),
    sa.Column('progress_step', sa.Integer(), nullable=False),
    sa.Column('progress_total', sa.Integer(), nullable=False),
    sa.Column('eta_s', sa.Float(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('assigned_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('started_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['models.id'], name=op.f('fk_jobs_model_id_models')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_jobs_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_model_id'), ['model_id'], unique=False)
        batch_op.create_index('ix_jobs_status_priority_created', ['status', 'priority', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_user_id'), ['user_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_worker_id'), ['worker_id'], unique=False)

    op.create_table('outputs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('index', sa.Integer(), nullable=False),
    sa.Column('object_key', sa.String(length=512), nullable=False),
    sa.Column('sidecar_key', sa.String(length=512), nullable=False),
    sa.Column('content_type', sa.String(length=32), nullable=False),
    sa.Column('content_sha256', sa.String(length=64), nullable=False),
    sa.Column('byte_size', sa.BigInteger(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('height', sa.Integer(), nullable=False),
    sa.Column('seed', sa.BigInteger(), nullable=False),
    sa.Column('lineage', farm.models.JSONType, nullable=False),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_outputs_job_id_jobs'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_outputs_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_outputs')),
    sa.UniqueConstraint('job_id', 'index', name=op.f('uq_outputs_job_id_index')),
    sa.UniqueConstraint('object_key', name=op.f('uq_outputs_object_key'))
    )
    with op.batch_alter_table('outputs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outputs_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outputs_user_id'), ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('outputs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_outputs_user_id'))
        batch_op.drop_index(batch_op.f('ix_outputs_job_id'))

    op.drop_table('outputs')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_worker_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_user_id'))
        batch_op.drop_index('ix_jobs_status_priority_created')
        batch_op.drop_index(batch_op.f('ix_jobs_model_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_campaign_id'))

    op.drop_table('jobs')
    with op.batch_alter_table('api_tokens', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_tokens_user_id'))

    op.drop_table('api_tokens')
    op.drop_table('users')
    op.drop_table('workers')
    op.drop_table('teams')
    op.drop_table('models')
