"""First schema: studies, trials, metric points.

Revision ID: 0001
Revises:
Create Date: 2025-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ms_studies",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("task", sa.String(40), nullable=False),
        sa.Column("metric", sa.String(40), nullable=False),
        sa.Column("mode", sa.String(3), nullable=False),
        sa.Column("num_samples", sa.Integer, nullable=False),
        sa.Column("repeats", sa.Integer, nullable=False),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("spec_yaml", sa.Text, nullable=False),
        sa.Column("tune_path", sa.Text, nullable=False),
        sa.Column("mlflow_uri", sa.Text, nullable=False),
        sa.Column("mlflow_experiment_id", sa.String(64)),
        sa.Column("mlflow_parent_run_id", sa.String(64)),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.UniqueConstraint("name", name="uq_ms_studies_name"),
        sa.CheckConstraint(
            "state IN ('running', 'interrupted', 'completed', 'failed')", name="ck_ms_studies_state"
        ),
    )
    op.create_table(
        "ms_trials",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("ms_studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trial_id", sa.String(64), nullable=False),
        sa.Column("optuna_trial_number", sa.Integer),
        sa.Column("mlflow_run_id", sa.String(64)),
        sa.Column("state", sa.String(12), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("config", sa.JSON, nullable=False),
        sa.Column("members", sa.Integer, nullable=False),
        sa.Column("members_diverged", sa.Integer, nullable=False),
        sa.Column("last_step", sa.Integer),
        sa.Column("metric_value", sa.Float),
        sa.Column("best_metric_value", sa.Float),
        sa.Column("objective", sa.Float),
        sa.Column("error_message", sa.Text),
        sa.Column("started_at", sa.DateTime),
        sa.Column("ended_at", sa.DateTime),
        sa.UniqueConstraint("study_id", "trial_id", name="uq_ms_trials_study_trial"),
        sa.CheckConstraint(
            "state IN ('pending', 'running', 'completed', 'diverged', 'failed', 'pruned')",
            name="ck_ms_trials_state",
        ),
    )
    op.create_index("ix_ms_trials_study_state", "ms_trials", ["study_id", "state"])
    op.create_table(
        "ms_metric_points",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("trial_pk", sa.Integer, sa.ForeignKey("ms_trials.id", ondelete="CASCADE"), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("member", sa.Integer, nullable=False),
        sa.Column("seed", sa.Integer),
        sa.Column("error", sa.Float),
        sa.Column("loss", sa.Float),
        sa.Column("mu", sa.Float),
        sa.Column("lr", sa.Float),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("diverged_at", sa.Integer),
        sa.Column("extra", sa.JSON, nullable=False),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        # Also the (trial, step) index the reports' queries use.
        sa.UniqueConstraint("trial_pk", "step", "member", name="uq_ms_metric_points_trial_step_member"),
        sa.CheckConstraint(
            "status IN ('running', 'completed', 'diverged')", name="ck_ms_metric_points_status"
        ),
        sa.CheckConstraint("member >= 0 AND step >= 0", name="ck_ms_metric_points_nonneg"),
    )


def downgrade() -> None:
    op.drop_table("ms_metric_points")
    op.drop_index("ix_ms_trials_study_state", "ms_trials")
    op.drop_table("ms_trials")
    op.drop_table("ms_studies")
