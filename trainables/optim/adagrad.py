"""AdaGrad (Duchi et al., 2011), written over batched tensors.

Written by hand rather than taken from ``torch.optim.Adagrad`` because a torch param group has one
scalar lr, while a population carries one lr per member along dim 0. It follows torch's
arithmetic (lr_decay = 0, initial accumulator 0, eps added outside the square root), and the tests
check member k against ``torch.optim.Adagrad`` run on that member's slice with its lr::

    G     <- G + g * g
    theta <- theta - lr * g / (sqrt(G) + eps)
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor

from .base import PopulationOptimizer, per_member


@torch.no_grad()
def adagrad_step(
    params: Sequence[Tensor], grads: Sequence[Tensor], sums: Sequence[Tensor], *, lr: Tensor, eps: float
) -> None:
    """In place: G <- G + g^2; theta <- theta - lr * g / (sqrt(G) + eps), lr of shape (K,)."""
    for p, g, s in zip(params, grads, sums):
        s.addcmul_(g, g)
        p.sub_(per_member(lr, p) * (g / s.sqrt().add_(eps)))


class Adagrad(PopulationOptimizer):
    """AdaGrad; ``mu`` is ignored."""

    name: ClassVar[str] = "adagrad"
    state_names: ClassVar[tuple[str, ...]] = ("sum_of_squares",)

    def __init__(self, params: Sequence[Tensor], lr: Tensor, *, eps: float = 1e-8) -> None:
        super().__init__(params, lr)
        if not eps > 0:
            raise ValueError(f"eps={eps!r} is not allowed: must be > 0")
        self.eps = float(eps)

    def hyperparameters(self) -> dict[str, float]:
        return {"eps": self.eps}

    def step(self, grads: Sequence[Tensor]) -> None:
        adagrad_step(self.params, self._check_grads(grads), self.state["sum_of_squares"], lr=self.lr, eps=self.eps)
