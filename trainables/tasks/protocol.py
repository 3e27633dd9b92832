"""What a task answers for itself: the typed interface every task in trainables/tasks implements.

Two protocols. A ``Task`` is what the service and the reports ask about a problem before, around
and after training (its defaults, its checks, its memory, its bias-only level, its labels), so that
no caller needs to know whether it is an autoencoder or an RNN. A ``Workload`` is what
``Task.build`` returns: the batched computation the training loop drives, the same small interface
(AlgoPerf-style) for every task, so the loop never branches on a task's name.

``task_for(name)`` (trainables/tasks/__init__.py) is the one way from a task's name to its Task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import torch

    from trainables.config import TaskConfig
    from trainables.tasks.memory import MemoryEstimate


@runtime_checkable
class Workload(Protocol):
    """A population of K members of one task, as one batched computation.

    - ``init_params()``: the population's weights, each with leading dimension K;
    - ``loss_and_grads(params, step)``: loss (K,) and gradients on the minibatch of update
      ``step``; it is ``loss_and_grads_on(params, batch(step))``, split so that CUDA graphs
      (trainables/graphs.py) capture the computation and leave the draw eager. ``batch(step)``
      draws the minibatch: tensors, plus the host values the computation reads (such as where the
      loss starts) and no others, as each host value is part of a graph's key;
      ``loss_and_grads_on`` computes on it, on the device, without a host sync. Optional
      ``scratch() -> list[Tensor]`` (not part of the protocol, looked up where used): buffers
      reused from one update to the next, which a captured update writes into;
    - ``error(params)``: the paper's reported error measure, (K,);
    - ``select(keep)``: keep only the members at positions ``keep`` (per-member seeds, scales and
      cached data), when others stop or diverge and leave the batched computation.
    """

    def init_params(self) -> list["torch.Tensor"]: ...

    def batch(self, step: int) -> Any: ...

    def loss_and_grads(self, params: list["torch.Tensor"], step: int) -> tuple["torch.Tensor", list["torch.Tensor"]]: ...

    def loss_and_grads_on(self, params: list["torch.Tensor"], batch: Any) -> tuple["torch.Tensor", list["torch.Tensor"]]: ...

    def error(self, params: list["torch.Tensor"]) -> "torch.Tensor": ...

    def select(self, keep: list[int]) -> None: ...


@runtime_checkable
class Task(Protocol):
    """One problem of the paper, answering every question about it that is not training itself.

    Labels (what tables, figures and the MLflow view show):

    - ``name``: the config's ``task``;
    - ``family``: the paper's section it belongs to, "autoencoder" (sec. 3) or "rnn" (sec. 4); the
      key of the paper's published scale and tables (study/published_results.yaml), never a
      reason for a caller to branch;
    - ``error_name``: what the reported error measures ("training squared error", "zero-one error");
    - ``default_metric``: the metric a study of this task ranks by when its spec names none;
    - ``paper_params``: the hyperparameters the paper varies for this task, in the order a run's
      row shows them;
    - ``bias_only_prediction``: what a model that learns its output biases only predicts, in words;
    - ``reports_final_phase_start``: whether a run also reports where each member's final
      low-momentum phase begins (Table 2 compares the error there with the final one).
    """

    name: str
    family: str
    error_name: str
    default_metric: str
    paper_params: tuple[str, ...]
    bias_only_prediction: str
    reports_final_phase_start: bool

    def resolve(self, cfg: "TaskConfig") -> "TaskConfig":
        """``cfg`` with every default the task decides filled in (init, init scale, momentum
        schedule, final phase, minibatch, sequence length, training and evaluation cases): the
        run the trainer makes of ``cfg``, spelt out. Values the config gives stay as given."""
        ...

    def validate(self, cfg: "TaskConfig") -> None:
        """Raise ConfigError (naming the key, the value and the rule) for what this task refuses."""
        ...

    def final_phase_updates(self, updates: int) -> int:
        """The final low-momentum phase of a run of ``updates`` updates when the config gives none."""
        ...

    def warmup_updates(self, cfg: "TaskConfig") -> int:
        """Updates before the momentum the config sets takes effect (0 when it does from the start)."""
        ...

    def memory_estimate(self, cfg: "TaskConfig") -> "MemoryEstimate":
        """Bytes a population of ``cfg`` allocates, per member and shared (trainables/tasks/memory.py)."""
        ...

    def bias_only_error(self, cfg: "TaskConfig") -> tuple[float, str]:
        """(error, how) of a model that learns its output biases only, on the cases ``cfg``'s
        error is scored on, computed with the task's own data code. OSError or ValueError when
        the data cannot be read here."""
        ...

    def error_resolution(self, cfg: "TaskConfig") -> float | None:
        """The smallest step between two errors a member of ``cfg`` can report (a count over the
        cases scored, divided by their number), or None where the error is continuous. A value
        below it (other than 0) cannot be told apart."""
        ...

    def build(self, cfg: "TaskConfig", device: "torch.device", dtype: "torch.dtype") -> Workload:
        """The batched computation of ``cfg``'s population on ``device``."""
        ...


def member_defaults(values: Sequence[Any] | Any, default: Any) -> Any:
    """A population field with its None entries replaced by ``default``, keeping its shape (a list
    stays a list of the same length, a scalar a scalar)."""
    if isinstance(values, list):
        return [default if v is None else v for v in values]
    return default if values is None else values


__all__ = ["Task", "Workload", "member_defaults"]
