"""Reports: the paper's tables (1, 2, 3, 5), sensitivity curves and Optuna importances for a study,
with the published values beside them (docs/reporting.md)."""

from study.report.build import Report, build_report, default_out_dir, log_to_mlflow
from study.report.data import StudyData, load_study, member_table
from study.report.published import load_published, published_value

__all__ = [
    "Report",
    "StudyData",
    "build_report",
    "default_out_dir",
    "load_published",
    "load_study",
    "log_to_mlflow",
    "member_table",
    "published_value",
]
