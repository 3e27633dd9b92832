"""Fused studies: the population (Ray trial) and worker process that trained a configuration, and
"pruned" members (a population stops its worst configurations at its rungs).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD_STATUS = "status IN ('running', 'completed', 'diverged')"
NEW_STATUS = "status IN ('running', 'completed', 'diverged', 'pruned')"


def upgrade() -> None:
    with op.batch_alter_table("ms_trials") as batch:
        batch.add_column(sa.Column("population", sa.String(64)))
        batch.add_column(sa.Column("worker_pid", sa.Integer()))
    with op.batch_alter_table("ms_metric_points") as batch:
        batch.drop_constraint("ck_ms_metric_points_status", type_="check")
        batch.create_check_constraint("ck_ms_metric_points_status", NEW_STATUS)


def downgrade() -> None:
    with op.batch_alter_table("ms_metric_points") as batch:
        batch.drop_constraint("ck_ms_metric_points_status", type_="check")
        batch.create_check_constraint("ck_ms_metric_points_status", OLD_STATUS)
    with op.batch_alter_table("ms_trials") as batch:
        batch.drop_column("worker_pid")
        batch.drop_column("population")
