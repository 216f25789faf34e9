"""instance: what kind of lesion mask it is (SEG, RTSTRUCT, or an outline SR: a mask by its content)

Revision ID: 0010
Revises: 0009
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

_BY_CLASS = {"1.2.840.10008.5.1.4.1.1.66.4": "SEG", "1.2.840.10008.5.1.4.1.1.481.3": "RTSTRUCT"}


def upgrade() -> None:
    with op.batch_alter_table('instance') as batch:
        batch.add_column(sa.Column('mask_kind', sa.String(16), nullable=True))
    instance = sa.table('instance', sa.column('sop_class_uid', sa.String), sa.column('mask_kind', sa.String))
    for sop_class, kind in _BY_CLASS.items():  # SRs received before 0010 were never read as outlines
        op.execute(instance.update().where(instance.c.sop_class_uid == sop_class).values(mask_kind=kind))


def downgrade() -> None:
    with op.batch_alter_table('instance') as batch:
        batch.drop_column('mask_kind')
