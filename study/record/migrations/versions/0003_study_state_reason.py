"""Why a study ended as it did: the reason of a failed or interrupted study.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ms_studies") as batch:
        batch.add_column(sa.Column("state_reason", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("ms_studies") as batch:
        batch.drop_column("state_reason")
