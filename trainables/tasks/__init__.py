"""The task registry: each task of the paper is a ``Task`` (trainables/tasks/protocol.py) that
answers for itself: its defaults, its checks, its memory, its bias-only level, its labels, and
``build(cfg, device, dtype)``, the batched computation (a ``Workload``) the training loop drives.
Callers ask ``task_for(name)`` and never branch on which kind of task it is.
"""

from __future__ import annotations

from typing import Any

from trainables.tasks.autoencoder import AutoencoderTask
from trainables.tasks.protocol import Task, Workload
from trainables.tasks.rnn import RNNTask

TASKS: dict[str, Task] = {
    **{name: AutoencoderTask(name) for name in ("curves", "mnist", "faces")},
    **{name: RNNTask(name) for name in ("addition", "multiplication", "mem5", "mem20", "xor")},
}


def task_for(name: str) -> Task:
    """The Task called ``name``; ValueError naming the allowed tasks otherwise."""
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ValueError(f"task={name!r} is not allowed: must be one of {list(TASKS)}") from None


def family(task: str) -> str:
    """The paper's section a task belongs to ("autoencoder" or "rnn"): a label and a key of the
    published results, not a reason to branch."""
    return task_for(task).family


def resolved_config(config: dict[str, Any] | Any) -> dict[str, Any]:
    """The training config a run of ``config`` trains with, every task default filled
    (``Task.resolve``), as JSON values: what the results database stores for a configuration."""
    from trainables.config import parse_config

    cfg = parse_config(config)
    return task_for(cfg.task).resolve(cfg).model_dump(mode="json")


__all__ = ["TASKS", "Task", "Workload", "family", "resolved_config", "task_for"]
