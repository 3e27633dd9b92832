"""Adam (Kingma & Ba, 2015), written over batched tensors.

Written by hand rather than taken from ``torch.optim.Adam`` because a torch param group has one
scalar lr, while a population carries one lr per member along dim 0. It follows torch's arithmetic
(no weight decay, no amsgrad, eps added after the bias-corrected square root), and the tests check
member k against ``torch.optim.Adam`` run on that member's slice with its lr::

    m     <- beta1 * m + (1 - beta1) * g
    s     <- beta2 * s + (1 - beta2) * g^2
    theta <- theta - lr / (1 - beta1^t) * m / (sqrt(s) / sqrt(1 - beta2^t) + eps)

The step count t is kept per member, so that ``reset_members`` restarts a member's bias
correction along with its moments.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor

from .base import PopulationOptimizer, per_member


@torch.no_grad()
def adam_step(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Tensor,
    *,
    lr: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """In place, one Adam update; ``steps`` (K,) counts each member's updates and is incremented."""
    steps.add_(1)
    t = steps.to(torch.float64)
    step_size = lr.to(torch.float64) / (1 - beta1**t)
    bias_correction2_sqrt = (1 - beta2**t).sqrt()
    for p, g, m, s in zip(params, grads, exp_avgs, exp_avg_sqs):
        m.lerp_(g, 1 - beta1)
        s.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = (s.sqrt() / per_member(bias_correction2_sqrt, s)).add_(eps)
        p.sub_(per_member(step_size, p) * (m / denom))


class Adam(PopulationOptimizer):
    """Adam; ``mu`` is ignored (beta1 plays the part of momentum)."""

    name: ClassVar[str] = "adam"
    state_names: ClassVar[tuple[str, ...]] = ("exp_avg", "exp_avg_sq")

    def __init__(
        self,
        params: Sequence[Tensor],
        lr: Tensor,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> None:
        super().__init__(params, lr)
        for name, value in (("adam_beta1", beta1), ("adam_beta2", beta2)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value!r} is not allowed: must lie in [0, 1)")
        if not eps > 0:
            raise ValueError(f"eps={eps!r} is not allowed: must be > 0")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        # One tensor of shape (K,), so reset_members and state_dict treat it like the moments.
        self.state["step"] = [torch.zeros(self.population_size, dtype=torch.float64, device=self.params[0].device)]

    def hyperparameters(self) -> dict[str, float]:
        return {"beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}

    def step(self, grads: Sequence[Tensor]) -> None:
        adam_step(
            self.params,
            self._check_grads(grads),
            self.state["exp_avg"],
            self.state["exp_avg_sq"],
            self.state["step"][0],
            lr=self.lr,
            beta1=self.beta1,
            beta2=self.beta2,
            eps=self.eps,
        )
