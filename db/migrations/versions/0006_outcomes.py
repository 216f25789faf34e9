"""outcomes: the site's pathology results with their history, shadow bundles and their results

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'outcome',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('source', sa.String(length=16), nullable=False),
        sa.Column('outcome_date', sa.Date(), nullable=True),
        sa.Column('subtype', sa.String(length=24), nullable=True),
        sa.Column('reference', sa.Text(), nullable=True),
        sa.Column('entered_by', sa.String(length=64), nullable=False),
        sa.Column('entered_at', sa.DateTime(), nullable=False),
        sa.Column('updated_by', sa.String(length=64), nullable=False),
        sa.Column('updated_at', sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('study_uid'),
    )
    op.create_index('ix_outcome_outcome_date', 'outcome', ['outcome_date'], unique=False)
    op.create_table(
        'outcome_change',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('at', sa.DateTime(), nullable=False),
        sa.Column('user', sa.String(length=64), nullable=False),
        sa.Column('via', sa.String(length=16), nullable=False),
        sa.Column('old', sa.JSON(), nullable=True),
        sa.Column('new', sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_outcome_change_study_uid', 'outcome_change', ['study_uid'], unique=False)
    with op.batch_alter_table('model') as batch:
        batch.add_column(sa.Column('shadow', sa.Boolean(), server_default=sa.text('false'), nullable=False))
    op.create_index('uq_model_one_shadow', 'model', ['shadow'], unique=True,
                    sqlite_where=sa.text('shadow = 1'), postgresql_where=sa.text('shadow'))
    op.create_table(
        'shadow_result',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('model_id', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('result', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['job.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['model_id'], ['model.id']),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_shadow_result_job_id', 'shadow_result', ['job_id'], unique=False)
    op.create_index('ix_shadow_result_model_id', 'shadow_result', ['model_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_shadow_result_model_id', table_name='shadow_result')
    op.drop_index('ix_shadow_result_job_id', table_name='shadow_result')
    op.drop_table('shadow_result')
    op.drop_index('uq_model_one_shadow', table_name='model')
    with op.batch_alter_table('model') as batch:
        batch.drop_column('shadow')
    op.drop_index('ix_outcome_change_study_uid', table_name='outcome_change')
    op.drop_table('outcome_change')
    op.drop_index('ix_outcome_outcome_date', table_name='outcome')
    op.drop_table('outcome')
