"""Task registry: every task is a module with ``build(cfg, device, dtype) -> workload``.

A workload has the same small interface whatever the task (AlgoPerf-style), so the training loop
never branches on a task's name:

- ``init_params() -> list[Tensor]``: the population's weights, each with leading dimension K;
- ``loss_and_grads(params, step) -> (loss (K,), grads)``: the minibatch of update ``step``;
- ``error(params) -> (K,)``: the paper's reported error measure;
- ``select(keep)``: keep only the members at positions ``keep`` (per-member seeds, scales and
  cached data), when others stop or diverge and leave the batched computation.
"""

from __future__ import annotations

from types import ModuleType

from trainables.tasks import autoencoder, rnn

TASKS: dict[str, ModuleType] = {
    "curves": autoencoder,
    "mnist": autoencoder,
    "faces": autoencoder,
    "addition": rnn,
    "multiplication": rnn,
    "mem5": rnn,
    "mem20": rnn,
    "xor": rnn,
}

# The paper's defaults per family: momentum schedule (Eq. 5 / sec. 4.2) and allowed inits.
FAMILY = {module: name for name, module in (("autoencoder", autoencoder), ("rnn", rnn))}
DEFAULT_SCHEDULE = {"autoencoder": "eq5", "rnn": "rnn"}
ALLOWED_INITS = {
    "autoencoder": ("sparse", "gaussian", "glorot", "orthogonal"),
    "rnn": ("esn", "gaussian", "glorot", "orthogonal"),
}


def family(task: str) -> str:
    return FAMILY[TASKS[task]]
