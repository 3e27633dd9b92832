"""Trial placement: the host, IP and Ray node id a trial ran on (multi-node studies).

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("ms_trials") as batch:
        batch.add_column(sa.Column("hostname", sa.String(255)))
        batch.add_column(sa.Column("node_ip", sa.String(64)))
        batch.add_column(sa.Column("ray_node_id", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("ms_trials") as batch:
        batch.drop_column("ray_node_id")
        batch.drop_column("node_ip")
        batch.drop_column("hostname")
