"""results: instance origin, the job's model bundle, resend-only replays, delivery sent time

Revision ID: 0002
Revises: 0001
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin', sa.String(length=8), server_default='received', nullable=False))
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('model_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('resend_only', sa.Boolean(), server_default=sa.text('false'), nullable=False))
        batch_op.create_foreign_key('fk_job_model_id_model', 'model', ['model_id'], ['id'])
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(), nullable=True))
        batch_op.create_index('ix_delivery_state_next', ['state', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('delivery', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_state_next')
        batch_op.drop_column('sent_at')
    with op.batch_alter_table('job', schema=None) as batch_op:
        batch_op.drop_constraint('fk_job_model_id_model', type_='foreignkey')
        batch_op.drop_column('resend_only')
        batch_op.drop_column('model_id')
    with op.batch_alter_table('instance', schema=None) as batch_op:
        batch_op.drop_column('origin')
