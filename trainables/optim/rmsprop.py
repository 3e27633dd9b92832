"""RMSprop (Hinton, lecture 6e) with classical momentum, and RMSprop with Nesterov momentum.

Both keep the running mean square ``ms`` of the gradient and use the velocity form of Eqs. 1-4,
so that they are to each other what CM is to NAG: the same update, with the gradient taken at
theta (``rmsprop``) or at theta + mu*v (``rmsprop_nesterov``). With mu = 0 ``rmsprop`` is plain
RMSprop.

Written by hand over batched tensors rather than taken from ``torch.optim.RMSprop`` because a
torch param group has one scalar lr, while a population carries one lr per member along dim 0.

``rmsprop`` follows torch's arithmetic (non-centered, eps added outside the square root) and the
tests check member k against ``torch.optim.RMSprop(alpha=decay, momentum=mu_k)`` on its slice::

    ms    <- decay * ms + (1 - decay) * g^2
    v     <- mu * v - lr * g / (sqrt(ms) + eps)
    theta <- theta + v

With constant lr this is torch's ``buf <- mu*buf + g/(sqrt(ms)+eps); theta <- theta - lr*buf``
with v = -lr*buf; like our CM, it does not rescale the velocity when lr changes.

``rmsprop_nesterov`` is the combination in Hinton's lecture 6e ("Combining RMSprop with Nesterov
momentum (Sutskever 2012)": divide the gradient correction, not the momentum jump, by the RMS of
recent gradients), written as in the course notes (lecture-optimization-tricks.md,
"Combining RMSProp with Nesterov Momentum") and Goodfellow et al., Deep Learning, Algorithm 8.6::

    g     <- grad f(theta + mu * v)                    (the look-ahead point, as Eq. 3)
    ms    <- decay * ms + (1 - decay) * g^2            (updated with this g before it is used)
    v     <- mu * v - lr * g / sqrt(ms + eps)
    theta <- theta + v

Choices: ms includes the current gradient (Algorithm 8.6's order; the lecture's r_t leaves it
open); eps sits inside the square root as in Algorithm 8.5 and this project's brief, so the
denominator is at least sqrt(eps) (1e-4 for eps = 1e-8). This differs from ``rmsprop``'s torch
convention sqrt(ms) + eps: for gradients much smaller than sqrt(eps) the Nesterov variant takes
smaller steps, so at mu = 0 the two are not identical.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor

from .base import PopulationOptimizer, per_member


@torch.no_grad()
def rmsprop_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    square_avgs: Sequence[Tensor],
    velocities: Sequence[Tensor],
    *,
    lr: Tensor,
    mu: Tensor,
    decay: float,
    eps: float,
) -> None:
    """In place: ms <- decay*ms + (1-decay)*g^2; v <- mu*v - lr*g/(sqrt(ms)+eps); theta <- theta + v."""
    for p, g, ms, v in zip(params, grads, square_avgs, velocities):
        ms.mul_(decay).addcmul_(g, g, value=1 - decay)
        v.mul_(per_member(mu, v)).sub_(per_member(lr, g) * (g / ms.sqrt().add_(eps)))
        p.add_(v)


@torch.no_grad()
def rmsprop_nesterov_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    square_avgs: Sequence[Tensor],
    velocities: Sequence[Tensor],
    *,
    lr: Tensor,
    mu: Tensor,
    decay: float,
    eps: float,
) -> None:
    """In place: ms <- decay*ms + (1-decay)*g^2; v <- mu*v - lr*g/sqrt(ms+eps); theta <- theta + v.

    ``grads`` must be evaluated at theta + mu*v with this same mu.
    """
    for p, g, ms, v in zip(params, grads, square_avgs, velocities):
        ms.mul_(decay).addcmul_(g, g, value=1 - decay)
        v.mul_(per_member(mu, v)).sub_(per_member(lr, g) * (g / ms.add(eps).sqrt_()))
        p.add_(v)


class RMSprop(PopulationOptimizer):
    """RMSprop with classical momentum ``mu`` (mu = 0: plain RMSprop); gradient at theta."""

    name: ClassVar[str] = "rmsprop"
    uses_momentum: ClassVar[bool] = True
    state_names: ClassVar[tuple[str, ...]] = ("square_avg", "velocity")
    _core = staticmethod(rmsprop_step)

    def __init__(self, params: Sequence[Tensor], lr: Tensor, *, decay: float = 0.9, eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"rms_decay={decay!r} is not allowed: must lie in [0, 1)")
        if not eps > 0:
            raise ValueError(f"eps={eps!r} is not allowed: must be > 0")
        self.decay = float(decay)
        self.eps = float(eps)

    def hyperparameters(self) -> dict[str, float]:
        return {"decay": self.decay, "eps": self.eps}

    def step(self, grads: Sequence[Tensor]) -> None:
        self._core(
            self.params,
            self._check_grads(grads),
            self.state["square_avg"],
            self.state["velocity"],
            lr=self.lr,
            mu=self.mu,
            decay=self.decay,
            eps=self.eps,
        )


class RMSpropNesterov(RMSprop):
    """RMSprop with Nesterov momentum (lecture 6e); gradient at theta + mu*v as in Eq. 3."""

    name: ClassVar[str] = "rmsprop_nesterov"
    _core = staticmethod(rmsprop_nesterov_step)

    @torch.no_grad()
    def gradient_point(self, out: Sequence[Tensor] | None = None) -> list[Tensor]:
        if out is None:
            return [p + per_member(self.mu, v) * v for p, v in zip(self.params, self.state["velocity"])]
        out = self._check_grads(out, "out")
        for o, p, v in zip(out, self.params, self.state["velocity"]):
            torch.add(p, per_member(self.mu, v) * v, out=o)
        return out
