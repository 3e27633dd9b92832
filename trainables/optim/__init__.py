"""Optimizers for a population of K members trained in lockstep.

Every optimizer has the same small interface (``PopulationOptimizer``: ``params``, ``lr``, ``mu``,
``gradient_point``, ``step``, ``reset_members``, ``select``, ``state_dict``, ``load_state_dict``),
so the training loop never branches on the method: it sets ``mu`` from the schedule, evaluates the
gradient at ``gradient_point()`` and calls ``step``. Methods without momentum ignore ``mu``.
A population may mix SGD, CM and NAG members (``MixedMomentum``).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from trainables.config import MIXABLE_OPTIMIZERS

from .adagrad import Adagrad, adagrad_step
from .adam import Adam, adam_step
from .base import PopulationOptimizer, per_member
from .momentum import CM, NAG, SGD, MixedMomentum, momentum_step
from .polyak import polyak_init, polyak_update
from .rmsprop import RMSprop, RMSpropNesterov, rmsprop_nesterov_step, rmsprop_step

OPTIMIZERS: dict[str, type[PopulationOptimizer]] = {
    cls.name: cls for cls in (NAG, CM, SGD, Adagrad, RMSprop, RMSpropNesterov, Adam)
}


def make_optimizer(
    name: str | Sequence[str],
    params: Sequence[Tensor],
    lr: Tensor,
    *,
    adam_beta1: float = 0.9,
    adam_beta2: float = 0.999,
    rms_decay: float = 0.9,
    eps: float = 1e-8,
) -> PopulationOptimizer:
    """The optimizer ``name`` over ``params`` (each (K, ...)) with per-member ``lr`` of shape (K,).

    Names: "nag" (Eqs. 3-4), "cm" (Eqs. 1-2), "sgd" (mu forced to 0), "adagrad", "rmsprop"
    (RMSprop with classical momentum mu; mu = 0 is plain RMSprop), "rmsprop_nesterov" (RMSprop
    with Nesterov momentum mu) and "adam" (ignores mu). Keyword arguments that a method does not
    use are ignored, so the trainer can pass the whole config.

    A list of K names gives member k the method ``name[k]``: one name K times is that method's own
    class, exactly as the single name; different names must all be "sgd", "cm" or "nag" and give
    ``MixedMomentum``.
    """
    if not isinstance(name, str):
        names = list(name)
        if len(set(names)) > 1:
            if not set(names) <= set(MIXABLE_OPTIMIZERS):
                raise ValueError(
                    f"optimizer={names!r} is not allowed: members with different optimizers may only use "
                    f"{sorted(MIXABLE_OPTIMIZERS)}"
                )
            return MixedMomentum(params, lr, members=names)
        if not names:
            raise ValueError("optimizer=[] is not allowed: give one name, or one per member")
        name = names[0]
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer={name!r} is not allowed: must be one of {sorted(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    if cls is Adam:
        return Adam(params, lr, beta1=adam_beta1, beta2=adam_beta2, eps=eps)
    if issubclass(cls, RMSprop):
        return cls(params, lr, decay=rms_decay, eps=eps)
    if cls is Adagrad:
        return Adagrad(params, lr, eps=eps)
    return cls(params, lr)


__all__ = [
    "CM",
    "MIXABLE_OPTIMIZERS",
    "NAG",
    "OPTIMIZERS",
    "SGD",
    "MixedMomentum",
    "Adagrad",
    "Adam",
    "PopulationOptimizer",
    "RMSprop",
    "RMSpropNesterov",
    "adagrad_step",
    "adam_step",
    "make_optimizer",
    "momentum_step",
    "per_member",
    "polyak_init",
    "polyak_update",
    "rmsprop_nesterov_step",
    "rmsprop_step",
]
