"""The whole contract between a training run and whoever drives it (a script, a test, Ray Tune).

A run trains a population of K >= 1 members in lockstep and calls ``reporter(report)`` every
``report_every`` updates and once at the end. The reporter knows nothing of the task and the task
knows nothing of Ray, MLflow or SQL: the study service adapts this interface to ``tune.report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

MemberStatus = Literal["running", "completed", "diverged"]


@dataclass(frozen=True)
class MemberMetrics:
    """One member's figures at one report.

    ``error`` is the paper's reported measure (autoencoders: training squared error per case;
    RNN problems: zero-one error, see docs/errors.md); ``loss`` is the minimised objective
    averaged over the updates since the last report. A diverged member keeps the figures of its
    last good report and ``diverged_at`` names the update whose loss was NaN or inf.
    """

    member: int
    error: float
    loss: float
    mu: float
    lr: float
    status: MemberStatus
    diverged_at: int | None = None
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Report:
    """What a run says every ``report_every`` updates, and once more when it ends."""

    step: int
    members: tuple[MemberMetrics, ...]
    final: bool
    # Returns a torch.save-able dict (every tensor on the CPU) that ``train(..., resume_from=...)``
    # continues exactly from. The state is copied only when this is called, and it can only be
    # called while the reporter runs (afterwards it raises: the run has moved on).
    checkpoint: Callable[[], dict[str, Any]]


class Reporter(Protocol):
    def __call__(self, report: Report) -> None: ...


def print_reporter(report: Report) -> None:
    """A reporter for scripts: one line per member per report."""
    for m in report.members:
        print(
            f"update {report.step:>7d}  member {m.member}  error {m.error:.5g}  "
            f"loss {m.loss:.5g}  mu {m.mu:.4f}  lr {m.lr:.3g}  {m.status}",
            flush=True,
        )
