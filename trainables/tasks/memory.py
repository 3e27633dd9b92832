"""How much memory a training run needs, as each task estimates it for itself.

Every task answers ``memory_estimate(cfg) -> MemoryEstimate`` (trainables/tasks/protocol.py)
from the sizes of the tensors it allocates (its weights and the optimizer's copies of them, BPTT's
arrays of every time step, the minibatch, the evaluation set, the training data), so a caller can
size a population and refuse one that cannot fit before any memory is spent, without knowing
which task it is.

An estimate is an upper figure for one process, within a small factor of what it really
allocates (tests/test_memory_limits.py measures the peak resident memory of real small runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trainables.config import TaskConfig


@dataclass(frozen=True)
class Part:
    """One item of an estimate: its bytes and the config fields it grows with."""

    what: str
    bytes: int
    fields: tuple[str, ...]


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of a population of K members: ``shared`` once (the training data), ``per_member`` K times."""

    per_member: tuple[Part, ...]
    shared: tuple[Part, ...] = field(default_factory=tuple)

    @property
    def member_bytes(self) -> int:
        return sum(p.bytes for p in self.per_member)

    @property
    def shared_bytes(self) -> int:
        return sum(p.bytes for p in self.shared)

    def total(self, members: int) -> int:
        """Bytes of a population of ``members`` members."""
        return self.shared_bytes + members * self.member_bytes

    def largest(self) -> Part:
        """The part that weighs most in a population of one: what to make smaller."""
        return max(self.per_member + self.shared, key=lambda p: p.bytes)


def dtype_bytes(cfg: "TaskConfig") -> int:
    return 8 if cfg.dtype == "float64" else 4


def weight_copies(cfg: "TaskConfig") -> int:
    """Weight-sized tensors per member: theta, its gradient, the gradient point, the velocity, the
    optimizer's scratch and a checkpoint's copy; adaptive methods keep two more (Adam's moments,
    RMSprop's and AdaGrad's accumulators); Polyak averaging one more."""
    names = cfg.optimizer if isinstance(cfg.optimizer, list) else [cfg.optimizer]
    adaptive = any(n in ("adam", "adagrad", "rmsprop", "rmsprop_nesterov") for n in names)
    return 6 + (2 if adaptive else 0) + (1 if cfg.polyak_decay is not None else 0)


def estimate(cfg: "TaskConfig") -> MemoryEstimate:
    """The estimate of the config's task (a solo config or a population: the per-member figures
    do not depend on K)."""
    from trainables.tasks import task_for

    return task_for(cfg.task).memory_estimate(cfg)
