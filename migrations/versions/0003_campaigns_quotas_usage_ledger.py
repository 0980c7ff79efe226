"""campaigns quotas usage ledger

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import farm.models

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('campaigns',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('base', farm.models.JSONType, nullable=False),
    sa.Column('matrix', farm.models.JSONType, nullable=True),
    sa.Column('row_count', sa.Integer(), nullable=False),
    sa.Column('job_count', sa.Integer(), nullable=False),
    sa.Column('image_count', sa.Integer(), nullable=False),
    sa.Column('budget_images', sa.Integer(), nullable=True),
    sa.Column('deadline', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('webhook_url', sa.String(length=2048), nullable=True),
    sa.Column('webhook_secret', sa.String(length=128), nullable=True),
    sa.Column('webhook_per_job', sa.Boolean(), nullable=False),
    sa.Column('webhook_state', sa.String(length=16), nullable=True),
    sa.Column('webhook_attempts', sa.Integer(), nullable=False),
    sa.Column('webhook_next_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('webhook_last_error', sa.Text(), nullable=True),
    sa.Column('finished_at', farm.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_campaigns_team_id_teams'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_campaigns_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_campaigns'))
    )
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_campaigns_team_id'), ['team_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_campaigns_user_id'), ['user_id'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('campaign_id', sa.Uuid(), nullable=False),
    sa.Column('job_id', sa.Uuid(), nullable=False),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['campaign_id'], ['campaigns.id'], name=op.f('fk_webhook_deliveries_campaign_id_campaigns'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('job_id', 'event', name=op.f('uq_webhook_deliveries_job_id_event'))
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_deliveries_state_next', ['state', 'next_at'], unique=False)

    op.create_table('quotas',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('images_per_day', sa.Integer(), nullable=True),
    sa.Column('gpu_seconds_per_month', sa.Float(), nullable=True),
    sa.Column('max_concurrent_jobs', sa.Integer(), nullable=True),
    sa.Column('max_pixels', sa.Integer(), nullable=True),
    sa.Column('max_steps', sa.Integer(), nullable=True),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_quotas_team_id_teams'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_quotas_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quotas')),
    sa.UniqueConstraint('team_id', name=op.f('uq_quotas_team_id')),
    sa.UniqueConstraint('user_id', name=op.f('uq_quotas_user_id'))
    )
    op.create_table('usage_ledger',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('created_at', farm.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('team_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Uuid(), nullable=True),
    sa.Column('campaign_id', sa.Uuid(), nullable=True),
    sa.Column('model_id', sa.String(length=128), nullable=True),
    sa.Column('images', sa.Integer(), nullable=False),
    sa.Column('gpu_seconds', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['team_id'], ['teams.id'], name=op.f('fk_usage_ledger_team_id_teams'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_usage_ledger_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_ledger'))
    )
    with op.batch_alter_table('usage_ledger', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_usage_ledger_campaign_id'), ['campaign_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_usage_ledger_job_id'), ['job_id'], unique=False)
        batch_op.create_index('ix_usage_ledger_team_created', ['team_id', 'created_at'], unique=False)
        batch_op.create_index('ix_usage_ledger_user_created', ['user_id', 'created_at'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reserved_gpu_seconds', sa.Float(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('rerender_of', sa.Uuid(), nullable=True))
        batch_op.create_index(batch_op.f('ix_jobs_rerender_of'), ['rerender_of'], unique=False)
        batch_op.create_foreign_key(batch_op.f('fk_jobs_campaign_id_campaigns'), 'campaigns', ['campaign_id'], ['id'], ondelete='CASCADE')



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_jobs_campaign_id_campaigns'), type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_jobs_rerender_of'))
        batch_op.drop_column('rerender_of')
        batch_op.drop_column('reserved_gpu_seconds')

    with op.batch_alter_table('usage_ledger', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_ledger_user_created')
        batch_op.drop_index('ix_usage_ledger_team_created')
        batch_op.drop_index(batch_op.f('ix_usage_ledger_job_id'))
        batch_op.drop_index(batch_op.f('ix_usage_ledger_campaign_id'))

    op.drop_table('usage_ledger')
    op.drop_table('quotas')
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_deliveries_state_next')
    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('campaigns', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_campaigns_user_id'))
        batch_op.drop_index(batch_op.f('ix_campaigns_team_id'))

    op.drop_table('campaigns')
