"""The updates between two reports as captured CUDA graphs, replayed once per update.

Why: an update is a fixed sequence of a few hundred small kernels (the RNN's three per time step
forward and two backward, the optimizer's per-tensor steps); at small K the GPU finishes each
before the host has launched the next, so launches, not arithmetic, set the speed. A CUDA graph
launches the whole update at once. ``train`` already runs these updates without a host sync
(``run_updates``), which is what capture needs.

What is captured, and what is not. An update has two parts (the workload interface,
trainables/tasks/__init__.py):

- drawing the step's minibatch, ``workload.batch(step)``: eager, a few batched kernels whose
  arguments depend on the step (counter-based keys, epoch orders) and whose shapes the host knows
  (an RNN minibatch's length varies with the step);
- everything else, captured: the gradient point, ``workload.loss_and_grads_on(point, batch)``, the
  divergence and loss bookkeeping, ``opt.step`` and Polyak averaging.

A graph reads and writes fixed addresses, so each captured update reads its inputs from static
tensors, filled before each replay by one device-side ``_foreach_copy_`` (no host sync): the
step's minibatch, the step's row of the momentum table (``opt.mu`` is pointed at the static one,
which the optimizers read as a tensor, never as a Python number) and, for ``first_nonfinite``, the
update's number (a device counter the graph increments). Everything the update changes (weights,
optimizer state, lr, averages, the bookkeeping, the gradient point) is changed in place.

Graphs are keyed by the minibatch's shape: its tensors' shapes and dtypes and its other fields
(host ints such as the RNN's ``loss_from``); the first update of a key runs eagerly (the warm-up
PyTorch asks for, on a side stream) and is then captured; later updates of that key replay it.
A graph is valid while the tensors it was captured against stay where they were: every call
checks their addresses (and the members' count), and any change (members leaving: ``keep_only``;
a resume loading state; a new lr tensor) drops every graph and captures again.

Memory. All graphs of a run share one memory pool, which holds only each update's temporaries
(every tensor that lives from one update to the next was allocated outside capture), so any two
graphs may reuse each other's temporaries: they never run at the same time and never read what
another left there. Scratch buffers a workload keeps between updates (the RNN's BPTT workspaces,
allocated outside capture by the warm-up) may be replaced by larger ones when a longer minibatch
comes: each graph keeps alive those the workload's ``scratch()`` listed when it was captured, so
the memory it writes stays its own and is never handed to another tensor.

On the CPU (and ``meta``) nothing is captured: the eager ``run_updates`` runs. ``EMULATE`` makes
the CPU go through the same static-buffer plumbing with the captured function called eagerly in
place of a replay; tests use it to check, bit for bit in float64, that the plumbing computes what
the eager loop does.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import torch

from trainables.optim import polyak_update

# Tests set this to run the graph path on the CPU, calling the captured function instead of a
# replay (see the module docstring); never set in production.
EMULATE = False


def update_graphs(workload: Any, opt: Any, polyak_decay: float | None, device: torch.device,
                  enabled: bool) -> "UpdateGraphs | None":
    """The graph runner of a run, or None where updates run eagerly: graphs off, a device other
    than CUDA (unless ``EMULATE``), or a workload without the batch / compute split."""
    if not enabled or not (hasattr(workload, "batch") and hasattr(workload, "loss_and_grads_on")):
        return None
    if device.type == "cuda":
        return UpdateGraphs(workload, opt, polyak_decay, emulate=False)
    if EMULATE and device.type == "cpu":
        return UpdateGraphs(workload, opt, polyak_decay, emulate=True)
    return None


@dataclasses.dataclass
class _Captured:
    inputs: list[torch.Tensor]  # the static minibatch tensors the graph reads
    replay: Callable[[], None]
    keep_alive: list[torch.Tensor]  # the workload's scratch buffers when it was captured (see Memory above)
    graph: Any = None


class UpdateGraphs:
    """Runs the updates between two reports through captured graphs (or their emulation)."""

    def __init__(self, workload: Any, opt: Any, polyak_decay: float | None, *, emulate: bool) -> None:
        self.workload, self.opt, self.polyak_decay, self.emulate = workload, opt, polyak_decay, emulate
        self._graphs: dict[tuple, _Captured] = {}
        self._signature: tuple | None = None
        self._pool: Any = None
        self._side: Any = None
        self._mu: torch.Tensor | None = None
        self._step: torch.Tensor | None = None
        self._bound: tuple = ()
        self.captures = 0  # graphs captured, and updates replayed, so far (for tests and benchmarks)
        self.replays = 0

    def reset(self) -> None:
        """Drop every graph (and what they hold): the next update captures again."""
        self._graphs.clear()
        self._pool = None
        self._signature = None
        self._bound = ()

    def run(
        self,
        params: list[torch.Tensor],
        averages: list[torch.Tensor] | None,
        mu_table: torch.Tensor,
        first_step: int,
        points: list[torch.Tensor] | None,
        finite: torch.Tensor,
        first_nonfinite: torch.Tensor,
        loss_sum: torch.Tensor,
        loss_count: torch.Tensor,
    ) -> list[torch.Tensor]:
        """What ``trainables.train.run_updates`` does, with the same arguments and result."""
        points = self._bind(params, averages, mu_table, points, finite, first_nonfinite, loss_sum, loss_count)
        # The update counter, read by first_nonfinite; each update adds 1 to it first. fill_ with
        # a Python number is a kernel argument, not a copy from the host.
        self._step.fill_(first_step)
        for i in range(mu_table.shape[0]):
            batch = self.workload.batch(first_step + i)
            tensors, key = _flatten(batch)
            captured = self._graphs.get(key)
            if captured is None:
                # This update runs eagerly as the key's warm-up, then the key is captured.
                self._graphs[key] = self._capture(batch, tensors, mu_table[i])
                continue
            torch._foreach_copy_([self._mu, *captured.inputs], [mu_table[i], *tensors])
            captured.replay()
            self.replays += 1
        return points

    # -- binding ----------------------------------------------------------------------------
    def _bind(self, params, averages, mu_table, points, finite, first_nonfinite, loss_sum, loss_count):
        opt = self.opt
        # Something may have replaced opt.mu (load_state_dict); every update sets it anyway, so
        # pointing it back at the static one changes nothing the run computes.
        if self._mu is not None and opt.mu is not self._mu and _same_layout(opt.mu, self._mu):
            opt.mu = self._mu
        if points is None:
            points = opt.gradient_point(None)  # allocated here, outside capture; overwritten by every update
        bound = (params, averages, points, finite, first_nonfinite, loss_sum, loss_count)
        if self._signature != self._signature_of(bound, mu_table):
            self.reset()
            self._mu = torch.empty_like(mu_table[0])
            self._step = torch.zeros((), dtype=torch.int64, device=mu_table.device)
            opt.mu = self._mu
            self._signature = self._signature_of(bound, mu_table)
        self._bound = bound
        return points

    def _signature_of(self, bound: tuple, mu_table: torch.Tensor) -> tuple:
        """Where every tensor a graph reads or writes lives: a graph stays valid while this does."""
        tensors = _tensors_in(vars(self.opt)) + _tensors_in(bound)
        return (tuple(_layout(t) for t in tensors), tuple(mu_table.shape[1:]), mu_table.dtype)

    # -- capture ----------------------------------------------------------------------------
    def _capture(self, batch: Any, tensors: list[torch.Tensor], mu: torch.Tensor) -> _Captured:
        inputs = [torch.empty_like(t) for t in tensors]
        static_batch = _unflatten(batch, iter(inputs))
        params, averages, points, finite, first_nonfinite, loss_sum, loss_count = self._bound
        workload, opt, decay, step = self.workload, self.opt, self.polyak_decay, self._step

        def update() -> None:
            # The same arithmetic as trainables.train.run_updates, one update; the step number
            # comes from the device counter instead of a Python int.
            opt.gradient_point(points)
            loss, grads = workload.loss_and_grads_on(points, static_batch)
            ok = torch.isfinite(loss)
            step.add_(1)
            first_nonfinite.copy_(torch.where(finite & ~ok, step, first_nonfinite))
            finite.logical_and_(ok)
            opt.step(grads)
            if averages is not None:
                polyak_update(averages, params, decay)
            loss_sum.add_(torch.where(finite, loss.double(), 0.0))
            loss_count.add_(finite)

        torch._foreach_copy_([self._mu, *inputs], [mu, *tensors])
        if self.emulate:
            update()  # the warm-up: this update, eagerly
            self.captures += 1
            return _Captured(inputs, update, [])
        # The run's device made current: capture records the current device's streams ("cuda:1"
        # tensors launch on cuda:1's stream, which a capture begun on cuda:0 would not see).
        with torch.cuda.device(mu.device):
            if self._side is None:
                self._side = torch.cuda.Stream()
            # The side stream waits for the main one and the main one for it: every block either
            # allocates is used in stream order, so neither needs record_stream.
            self._side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self._side):  # the warm-up on a side stream, as torch.cuda.graph asks
                update()
            torch.cuda.current_stream().wait_stream(self._side)
            graph = torch.cuda.CUDAGraph()
            # Capture records kernels without running them: the state stays after the warm-up
            # update. torch.cuda.graph synchronizes the device once on entry (once per key).
            with torch.cuda.graph(graph, pool=self._pool):
                update()
        if self._pool is None:
            self._pool = graph.pool()
        self.captures += 1
        scratch = getattr(workload, "scratch", None)
        return _Captured(inputs, graph.replay, list(scratch()) if scratch else [], graph)


# -- minibatches as tensors plus a key --------------------------------------------------------
def _flatten(batch: Any) -> tuple[list[torch.Tensor], tuple]:
    """A minibatch's tensors, and its key: their shapes and dtypes, and its other fields.

    A minibatch is a tensor, a tuple or list, or a dataclass, of tensors and hashable host values
    (ints, floats, strings, None). Its host values must be what the computation depends on (they
    are baked into the graph), so a workload leaves out what changes every step but is not read.
    """
    tensors: list[torch.Tensor] = []

    def walk(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            tensors.append(x)
            return ("tensor", tuple(x.shape), x.dtype, x.device)
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return (type(x), tuple((f.name, walk(getattr(x, f.name))) for f in dataclasses.fields(x)))
        if isinstance(x, (tuple, list)):
            return (type(x), tuple(walk(v) for v in x))
        if isinstance(x, (int, float, str, bool, type(None))):
            return x
        raise TypeError(f"minibatch field of type {type(x).__name__} is not allowed in a captured update: "
                        "use tensors, tuples, lists, dataclasses and ints, floats, strings or None")

    return tensors, walk(batch)


def _unflatten(batch: Any, tensors: Any) -> Any:
    """``batch`` with its tensors replaced, in order, by ``tensors`` (an iterator)."""
    if isinstance(batch, torch.Tensor):
        return next(tensors)
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        return dataclasses.replace(batch, **{f.name: _unflatten(getattr(batch, f.name), tensors)
                                             for f in dataclasses.fields(batch) if f.init})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(_unflatten(v, tensors) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_unflatten(v, tensors) for v in batch)
    return batch


def _tensors_in(x: Any, depth: int = 4) -> list[torch.Tensor]:
    """The tensors in ``x``, looking into dicts, lists, tuples and dataclasses ``depth`` deep."""
    if isinstance(x, torch.Tensor):
        return [x]
    if depth == 0:
        return []
    if isinstance(x, dict):
        items = list(x.values())
    elif isinstance(x, (list, tuple)):
        items = list(x)
    elif dataclasses.is_dataclass(x) and not isinstance(x, type):
        items = [getattr(x, f.name) for f in dataclasses.fields(x)]
    else:
        return []
    return [t for v in items for t in _tensors_in(v, depth - 1)]


def _layout(t: torch.Tensor) -> tuple:
    return (t.device, t.dtype, tuple(t.shape), t.stride(), t.data_ptr() if t.device.type != "meta" else id(t))


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.device == b.device
