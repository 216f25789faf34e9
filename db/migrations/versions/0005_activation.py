"""model: who activated a bundle, when, and the guards it was activated over (--force)

Revision ID: 0005
Revises: 0004
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model') as batch:
        batch.add_column(sa.Column('activated_at', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('activated_by', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('activated_despite', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model') as batch:
        batch.drop_column('activated_despite')
        batch.drop_column('activated_by')
        batch.drop_column('activated_at')
