"""Time to target: the spec's target for a configuration's metric and the first report step at
which the configuration reached it (both NULL where the spec gives no target or it was not reached).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ms_trials") as batch:
        batch.add_column(sa.Column("target", sa.Float()))
        batch.add_column(sa.Column("updates_to_target", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("ms_trials") as batch:
        batch.drop_column("updates_to_target")
        batch.drop_column("target")
