"""The code a study ran on (study/code_version.py), as its reports name it.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ms_studies") as batch:
        batch.add_column(sa.Column("code_version", sa.Text()))


def downgrade() -> None:
    with op.batch_alter_table("ms_studies") as batch:
        batch.drop_column("code_version")
