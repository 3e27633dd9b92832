"""Classical momentum (Eqs. 1-2) and Nesterov's accelerated gradient (Eqs. 3-4), and plain SGD.

Both methods make the same update from a gradient g::

    v     <- mu * v - lr * g        (Eq. 1 / Eq. 3)
    theta <- theta + v              (Eq. 2 / Eq. 4)

and differ only in where g is computed: at theta for CM, at theta + mu*v for NAG. So one
functional core, ``momentum_step``, serves both, and the classes differ in ``gradient_point``.

Why not ``torch.optim.SGD(momentum=mu, nesterov=True)``: torch stores ``buf = -v/lr`` and updates
the look-ahead point phi = theta + mu*v instead of theta. With constant lr and mu the iterates are
the same (see the tests), but (1) torch uses one mu for both halves of its step, which differs from
Eq. 3 whenever mu changes between updates, as it does under Eq. 5 and the final phase; (2) storing
v/lr rescales the velocity when lr changes mid-run, which the paper's form does not; and (3) a
torch param group carries one scalar lr, while a population carries one lr per member along dim 0.
Where torch's convention differs from Sutskever et al., ours follows the paper.

A population whose members use different ones of the three (``MixedMomentum``) runs the same
update with two per-member flags: the gradient is taken at theta + (nesterov_k * mu_k) * v and
the velocity decays by mu_k * momentum_k, so a CM member's point is theta and an SGD member's mu
is 0, as in the classes of their own.
"""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor

from trainables.config import MIXABLE_OPTIMIZERS

from .base import PopulationOptimizer, per_member


@torch.no_grad()
def momentum_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    velocities: Sequence[Tensor],
    *,
    lr: Tensor,
    mu: Tensor,
) -> None:
    """In place: v <- mu*v - lr*g; theta <- theta + v (Eqs. 1-2 for CM, 3-4 for NAG).

    ``lr`` and ``mu`` have shape (K,) and act along dim 0 of every tensor. ``grads`` must be
    evaluated at theta (CM) or at theta + mu*v with this same mu (NAG).
    """
    dtype = params[0].dtype
    mu, neg_lr = mu.to(dtype), lr.to(dtype).neg()  # once per update, not per tensor
    if lr.numel() == 1:
        # One member: the multi-tensor kernels torch.optim.SGD uses (foreach) where they take a
        # tensor scalar; lr and mu stay tensors on the parameters' device (no host round trip).
        velocities, params = list(velocities), list(params)
        torch._foreach_mul_(velocities, mu[0])
        for v, g in zip(velocities, grads):
            v.addcmul_(g, neg_lr[0])
        torch._foreach_add_(params, velocities)
        return
    for p, g, v in zip(params, grads, velocities):
        v.mul_(per_member(mu, v)).addcmul_(g, per_member(neg_lr, g))
        p.add_(v)


class CM(PopulationOptimizer):
    """Classical momentum (Polyak, 1964), Eqs. 1-2: the gradient is taken at theta."""

    name: ClassVar[str] = "cm"
    uses_momentum: ClassVar[bool] = True
    state_names: ClassVar[tuple[str, ...]] = ("velocity",)

    def step(self, grads: Sequence[Tensor]) -> None:
        momentum_step(self.params, self._check_grads(grads), self.state["velocity"], lr=self.lr, mu=self.mu)


class NAG(CM):
    """Nesterov's accelerated gradient in the paper's form, Eqs. 3-4.

    The gradient is evaluated at theta_t + mu_t * v_t, exactly as Eq. 3 writes it, with the mu_t
    set before ``gradient_point`` (not torch's look-ahead reformulation; see the module docstring).
    ``params`` stays theta (the paper's iterate), not the look-ahead point.
    """

    name: ClassVar[str] = "nag"

    @torch.no_grad()
    def gradient_point(self, out: Sequence[Tensor] | None = None) -> list[Tensor]:
        velocities = self.state["velocity"]
        mu = self.mu.to(velocities[0].dtype)
        if out is None:
            if self.population_size == 1:
                return list(torch._foreach_addcmul(self.params, velocities, [mu[0]] * len(velocities)))
            return [torch.addcmul(p, v, per_member(mu, v)) for p, v in zip(self.params, velocities)]
        out = self._check_grads(out, "out")
        for o, p, v in zip(out, self.params, velocities):  # one pass each; foreach has no out=
            torch.addcmul(p, v, mu[0] if self.population_size == 1 else per_member(mu, v), out=o)
        return out


class SGD(CM):
    """Plain SGD: CM with mu forced to 0 whatever the trainer sets (Table 1's mu_max = 0 column)."""

    name: ClassVar[str] = "sgd"
    uses_momentum: ClassVar[bool] = False

    def step(self, grads: Sequence[Tensor]) -> None:
        zero = torch.zeros_like(self.lr)
        momentum_step(self.params, self._check_grads(grads), self.state["velocity"], lr=self.lr, mu=zero)


# Each of MIXABLE_OPTIMIZERS (the methods a population may mix) as its flags in the one batched
# update: (gradient at the look-ahead point, momentum used).
MIXED_FLAGS: dict[str, tuple[bool, bool]] = {"sgd": (False, False), "cm": (False, True), "nag": (True, True)}


class MixedMomentum(CM):
    """A population whose member k uses ``members[k]``, one of "sgd", "cm" and "nag".

    One update for all, with per-member flags (K,): the gradient point is theta + (nesterov * mu) * v
    (NAG's Eq. 3 where nesterov = 1, theta for CM and SGD) and the velocity decays by
    mu * momentum (SGD's members get mu = 0 whatever the trainer sets). Same state ("velocity")
    and interface as CM; ``members`` is saved with the state as a hyperparameter.
    """

    name: ClassVar[str] = "mixed_momentum"

    def __init__(self, params: Sequence[Tensor], lr: Tensor, *, members: Sequence[str]) -> None:
        super().__init__(params, lr)
        members = list(members)
        if len(members) != self.population_size or any(m not in MIXABLE_OPTIMIZERS for m in members):
            raise ValueError(
                f"members={members!r} is not allowed: one of {sorted(MIXABLE_OPTIMIZERS)} for each of the "
                f"{self.population_size} members"
            )
        self.members = members
        flags = torch.tensor([MIXED_FLAGS[m] for m in members], dtype=torch.float64).reshape(-1, 2)
        self.nesterov, self.momentum = (f.to(self.lr.device) for f in flags.unbind(1))

    def hyperparameters(self) -> dict[str, Any]:
        return {"members": list(self.members)}

    @torch.no_grad()
    def gradient_point(self, out: Sequence[Tensor] | None = None) -> list[Tensor]:
        velocities = self.state["velocity"]
        mu = (self.mu * self.nesterov).to(velocities[0].dtype)
        if out is None:
            return [torch.addcmul(p, v, per_member(mu, v)) for p, v in zip(self.params, velocities)]
        out = self._check_grads(out, "out")
        for o, p, v in zip(out, self.params, velocities):
            torch.addcmul(p, v, per_member(mu, v), out=o)
        return out

    def step(self, grads: Sequence[Tensor]) -> None:
        mu = self.mu * self.momentum
        momentum_step(self.params, self._check_grads(grads), self.state["velocity"], lr=self.lr, mu=mu)

    def select(self, keep: Sequence[int]) -> None:
        super().select(keep)
        self.members = [self.members[int(i)] for i in keep]
        idx = torch.tensor([int(i) for i in keep], dtype=torch.long).to(self.lr.device)
        self.nesterov, self.momentum = self.nesterov.index_select(0, idx), self.momentum.index_select(0, idx)
