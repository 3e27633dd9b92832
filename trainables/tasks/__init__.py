"""Task registry: every task is a module with ``build(cfg, device, dtype) -> workload``.

A workload has the same small interface whatever the task (AlgoPerf-style), so the training loop
never branches on a task's name:

- ``init_params() -> list[Tensor]``: the population's weights, each with leading dimension K;
- ``loss_and_grads(params, step) -> (loss (K,), grads)``: the minibatch of update ``step``; it is
  ``loss_and_grads_on(params, batch(step))``, split so that CUDA graphs (trainables/graphs.py)
  capture the computation and leave the draw eager. ``batch(step)`` draws the minibatch: tensors,
  plus the host values the computation reads (such as where the loss starts) and no others, as
  each host value is part of a graph's key; ``loss_and_grads_on`` computes on it, on the device,
  without a host sync. Optional ``scratch() -> list[Tensor]``: buffers reused from one update to
  the next, which a captured update writes into;
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
