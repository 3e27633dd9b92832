"""Pure PyTorch trainables: the paper's tasks, optimizers, schedules and initializations.

Nothing here imports Ray, MLflow, SQL or Optuna (design.md); the study service drives
``train`` through the small reporting interface in ``trainables.api``.
"""

from trainables.api import MemberMetrics, Report, Reporter, print_reporter
from trainables.config import ConfigError, TaskConfig, parse_config
from trainables.train import check_config, train

__all__ = ["ConfigError", "MemberMetrics", "Report", "Reporter", "TaskConfig", "check_config", "parse_config", "print_reporter", "train"]
