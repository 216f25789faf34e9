"""study: an admin's release of a study retention keeps unanswered

Revision ID: 0007
Revises: 0006
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.add_column(sa.Column('released_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('released_by', sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('study') as batch:
        batch.drop_column('released_by')
        batch.drop_column('released_at')
