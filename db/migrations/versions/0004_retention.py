"""retention: pinned studies and the record of deletions

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.add_column(sa.Column('pinned_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('pinned_by', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('pin_reason', sa.Text(), nullable=True))
    op.create_table(
        'deletion',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('study_uid', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.String(length=16), nullable=False),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('marked_at', sa.DateTime(), nullable=False),
        sa.Column('finished_at', sa.DateTime(), nullable=True),
        sa.Column('instance_ids', sa.JSON(), nullable=False),
        sa.Column('paths', sa.JSON(), nullable=False),
        sa.Column('instances', sa.Integer(), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('jobs', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_deletion_study_uid', 'deletion', ['study_uid'], unique=False)
    op.create_index('ix_deletion_marked_at', 'deletion', ['marked_at'], unique=False)
    op.create_index('ix_deletion_state', 'deletion', ['state'], unique=False)
    op.create_index('uq_deletion_marked_per_study', 'deletion', ['study_uid'], unique=True,
                    sqlite_where=sa.text("state = 'marked'"), postgresql_where=sa.text("state = 'marked'"))


def downgrade() -> None:
    op.drop_index('uq_deletion_marked_per_study', table_name='deletion')
    op.drop_index('ix_deletion_state', table_name='deletion')
    op.drop_index('ix_deletion_marked_at', table_name='deletion')
    op.drop_index('ix_deletion_study_uid', table_name='deletion')
    op.drop_table('deletion')
    with op.batch_alter_table('study') as batch:
        batch.drop_column('pin_reason')
        batch.drop_column('pinned_by')
        batch.drop_column('pinned_at')
