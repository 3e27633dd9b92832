"""The whole contract between a training run and whoever drives it (a script, a test, Ray Tune).

A run trains a population of K >= 1 members in lockstep and calls ``reporter(report)`` every
``report_every`` updates and once at the end. The reporter may return members to stop (their
indices in the population); they leave the batched computation. The reporter knows nothing of the
task and the task knows nothing of Ray, MLflow or SQL: the study service adapts this interface to
``tune.report``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Literal, Protocol

# "running" until the member ends: "completed" (all updates done), "diverged" (a NaN or inf loss or
# error) or "pruned" (stopped by the reporter). An ended member is out of the computation.
MemberStatus = Literal["running", "completed", "diverged", "pruned"]


@dataclass(frozen=True)
class MemberMetrics:
    """One member's figures at one report.

    ``error`` is the paper's reported measure (autoencoders: training squared error per case;
    RNN problems: zero-one error, see docs/errors.md); ``loss`` is the minimised objective
    averaged over the updates since the last report. A diverged member keeps the figures of its
    last good report and ``diverged_at`` names the update whose loss was NaN or inf; a pruned
    member keeps the figures of the report at which the reporter stopped it.
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
    # All K members of the population in order (``member`` = index), ended ones with their last
    # figures and status.
    members: tuple[MemberMetrics, ...]
    final: bool
    # Returns a torch.save-able dict (every tensor on the CPU) that ``train(..., resume_from=...)``
    # continues exactly from. The state is copied only when this is called, and it can only be
    # called while the reporter runs (afterwards it raises: the run has moved on). It holds the
    # members as reported: a stop that the reporter returns is not in it.
    checkpoint: Callable[[], dict[str, Any]]


class Reporter(Protocol):
    """Called at every report. Returns None, or the members to stop (indices 0..K-1 in the
    population): those still running become "pruned" and leave the batched computation, so the
    following updates compute for the others alone; the run ends, without another report, once
    none runs. Members that have already ended are ignored, and so is every stop at the final
    report."""

    def __call__(self, report: Report) -> Iterable[int] | None: ...


def print_reporter(report: Report) -> None:
    """A reporter for scripts: one line per member per report."""
    for m in report.members:
        print(
            f"update {report.step:>7d}  member {m.member}  error {m.error:.5g}  "
            f"loss {m.loss:.5g}  mu {m.mu:.4f}  lr {m.lr:.3g}  {m.status}",
            flush=True,
        )
