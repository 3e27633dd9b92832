"""The interface every population optimizer shares, and the per-member broadcasting helper.

A population of K members is trained in lockstep: every parameter tensor has a leading member
dimension (shape (K, ...)) and the per-member hyperparameters lr and mu are 1-D tensors of shape
(K,). The training loop calls, for every optimizer alike::

    opt.mu = mu_t                      # (K,), from the schedule; ignored without momentum
    points = opt.gradient_point(points)  # theta, or theta + mu*v for Nesterov methods (reusing
                                         # the previous point's tensors; None the first time)
    grads = gradient_of_loss(points)   # the caller's job
    opt.step(grads)

Members can leave the population between two steps (a stopped or diverged member):
``select(keep)`` keeps the members at the given positions and drops the rest from every tensor,
so that the following steps compute only for those that remain.

This is not a ``torch.optim.Optimizer``: its param groups carry one scalar lr each and its
``step(closure)`` evaluates the gradient at the parameters themselves, while a population needs a
per-member lr along dim 0 and NAG needs the gradient at a point other than theta (Eq. 3).
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor


def per_member(x: Tensor, like: Tensor) -> Tensor:
    """``x`` of shape (K,) (or a scalar) as (K, 1, ..., 1), to broadcast along dim 0 of ``like``."""
    return torch.as_tensor(x, dtype=like.dtype, device=like.device).reshape(-1, *([1] * (like.dim() - 1)))


def _as_member_vector(name: str, value: Any, k: int) -> Tensor:
    # Straight to float64: torch.as_tensor(0.02) alone is float32, and 0.02 would arrive as
    # 0.019999999552965164 in every member's lr.
    t = value.to(torch.float64) if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if t.dim() == 0:
        t = t.expand(k)
    if t.shape != (k,):
        raise ValueError(
            f"{name} of shape {tuple(t.shape)} is not allowed: must be a scalar or have shape ({k},), "
            "one value per population member"
        )
    return t.clone()


class PopulationOptimizer:
    """Updates a population's parameters in place from gradients the caller computes.

    Attributes:
        params: theta, each of shape (K, ...), updated in place by ``step``.
        lr: (K,) learning rates; the trainer may reassign or edit it between steps.
        mu: (K,) momentum coefficients; the trainer sets it from the schedule before
            ``gradient_point``, and must not change it between ``gradient_point`` and ``step``
            (Eq. 3 uses the same mu_t for the gradient point and the velocity decay).
        state: per-parameter state, name -> list of tensors with a leading member dimension.
    """

    name: ClassVar[str] = ""
    # Whether ``mu`` changes anything; the trainer may still set it for every method.
    uses_momentum: ClassVar[bool] = False
    # Names of the per-parameter state lists (zeros of the parameter's shape at the start).
    state_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Sequence[Tensor], lr: Tensor | float | Sequence[float]) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("params=[] is not allowed: an optimizer needs at least one tensor")
        shapes = [tuple(p.shape) for p in self.params]
        if any(len(s) == 0 for s in shapes) or len({s[0] for s in shapes}) != 1:
            raise ValueError(
                f"params with shapes {shapes} are not allowed: every tensor needs the same leading "
                "member dimension K"
            )
        self.population_size = shapes[0][0]
        device = self.params[0].device
        if any(p.device != device for p in self.params):
            raise ValueError(f"params on devices {sorted({str(p.device) for p in self.params})} are not allowed: one device")
        # Validated where the values are (the host), then kept on the parameters' device: the
        # update reads lr and mu as tensors there, never as Python numbers (no host round trip).
        lr = _as_member_vector("lr", lr, self.population_size)
        if lr.device.type != "meta" and not bool(torch.all(torch.isfinite(lr) & (lr > 0))):
            raise ValueError(f"lr={lr.tolist()!r} is not allowed: each must be a finite number > 0")
        self.lr = lr.to(device)
        self.mu = torch.zeros(self.population_size, dtype=torch.float64, device=device)
        self.state: dict[str, list[Tensor]] = {
            n: [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
            for n in self.state_names
        }

    @torch.no_grad()
    def gradient_point(self, out: Sequence[Tensor] | None = None) -> list[Tensor]:
        """The point at which the caller evaluates the gradient (here theta), as new tensors (not
        views of theta), or written into ``out`` (tensors of the parameters' shapes, e.g. the
        previous call's result) and returned. Reusing ``out`` spares a training loop allocating
        a copy of every weight each update; the caller must be done with the previous point."""
        if out is None:
            return [p.detach().clone() for p in self.params]
        out = self._check_grads(out, "out")
        torch._foreach_copy_(out, self.params)
        return out

    def step(self, grads: Sequence[Tensor]) -> None:
        """One update from ``grads``, evaluated at ``gradient_point()``."""
        raise NotImplementedError

    def _check_grads(self, grads: Sequence[Tensor], what: str = "grads") -> list[Tensor]:
        """``grads`` (or another list named ``what``) as a list, after checking it matches params."""
        grads = list(grads)
        if len(grads) != len(self.params) or any(g.shape != p.shape for g, p in zip(grads, self.params)):
            raise ValueError(
                f"{what} with shapes {[tuple(g.shape) for g in grads]} do not match params with shapes "
                f"{[tuple(p.shape) for p in self.params]}"
            )
        return grads

    def reset_members(self, mask: Tensor) -> None:
        """Zero all state (velocity, accumulators, step counts) of members where ``mask`` is True."""
        mask = torch.as_tensor(mask).to(self.lr.device, torch.bool)
        if mask.shape != (self.population_size,):
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} is not allowed: must have shape ({self.population_size},)"
            )
        # masked_fill, not t[mask] = 0: boolean indexing asks the host how many are set (a sync).
        for tensors in self.state.values():
            for t in tensors:
                t.masked_fill_(mask.view(-1, *([1] * (t.dim() - 1))), 0)

    @torch.no_grad()
    def select(self, keep: Sequence[int]) -> None:
        """Keep only the members at positions ``keep`` (in that order; may be empty), dropping the
        others from params, every state list, lr and mu. ``params`` are then new tensors (the
        caller takes them from ``opt.params``); each member's values are unchanged."""
        keep = [int(i) for i in keep]
        if any(not 0 <= i < self.population_size for i in keep):
            raise ValueError(f"keep={keep!r} is not allowed: positions must lie in [0, {self.population_size})")
        idx = torch.tensor(keep, dtype=torch.long).to(self.lr.device)
        self.params = [p.index_select(0, idx) for p in self.params]
        # Generic over the state lists: velocities, accumulators and Adam's (K,) step counts alike.
        self.state = {n: [t.index_select(0, idx) for t in ts] for n, ts in self.state.items()}
        self.lr = self.lr.index_select(0, idx)
        self.mu = self.mu.index_select(0, idx)
        self.population_size = len(keep)

    def state_dict(self) -> dict[str, Any]:
        """Everything but the parameters themselves (the model saves those, as with torch.optim)."""
        return {
            "name": self.name,
            "lr": self.lr.clone(),
            "mu": self.mu.clone(),
            "hyperparameters": self.hyperparameters(),
            "state": {n: [t.clone() for t in ts] for n, ts in self.state.items()},
        }

    def load_state_dict(self, d: dict[str, Any]) -> None:
        if d.get("name") != self.name:
            raise ValueError(f"state of optimizer {d.get('name')!r} cannot be loaded into {self.name!r}")
        if d["hyperparameters"] != self.hyperparameters():
            raise ValueError(
                f"state with hyperparameters {d['hyperparameters']} cannot be loaded into an optimizer "
                f"with {self.hyperparameters()}"
            )
        if set(d["state"]) != set(self.state):
            raise ValueError(f"state entries {sorted(d['state'])} do not match {sorted(self.state)}")
        for n, tensors in self.state.items():
            saved = d["state"][n]
            if [tuple(s.shape) for s in saved] != [tuple(t.shape) for t in tensors]:
                raise ValueError(f"state {n!r} has shapes that do not match the parameters")
            for t, s in zip(tensors, saved):
                t.copy_(s)
        # Saved on any device (a checkpoint may come from another machine): kept on ours.
        self.lr = d["lr"].to(self.lr.device, torch.float64, copy=True)
        self.mu = d["mu"].to(self.mu.device, torch.float64, copy=True)

    def hyperparameters(self) -> dict[str, Any]:
        """The fixed hyperparameters (all but lr and mu), saved with the state and checked on loading."""
        return {}

    def __repr__(self) -> str:
        hp = ", ".join(f"{k}={v}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}(K={self.population_size}{', ' if hp else ''}{hp})"
