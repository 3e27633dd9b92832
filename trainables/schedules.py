"""Momentum schedules: pure functions from the update index to the momentum coefficient mu.

``t`` is 0-based: the number of parameter updates already done, so ``schedule(t)`` is the mu used
by update t+1. Each factory validates its arguments once and returns ``schedule(t) -> float``; a
schedule that changes another (the final low-momentum phase) is a function of functions.
"""

from __future__ import annotations

from typing import Callable

Schedule = Callable[[int], float]


def _check_momentum(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(f"{name}={value!r} is not allowed: momentum must lie in [0, 1)")


def _check_count(name: str, value: int, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: must be an integer >= {minimum}")


def _check_step(t: int) -> None:
    if t < 0:
        raise ValueError(f"t={t!r} is not allowed: the update index must be >= 0")


def eq5(mu_max: float) -> Schedule:
    r"""The autoencoder schedule of the paper's Eq. 5 (sec. 3).

    .. math::
        \mu_t = \min\left(1 - 2^{-1 - \log_2(\lfloor t/250 \rfloor + 1)},\ \mu_{\max}\right)

    Since :math:`2^{-1-\log_2 n} = 1/(2n)`, this is computed exactly as ``1 - 1/(2n)`` with
    ``n = t // 250 + 1``: mu is 0.5, 0.75, 0.8333.., 0.875, ... in blocks of 250 updates, close to
    Nesterov's 1 - 3/(t + 5) and capped at ``mu_max``.

    Args:
        mu_max: the cap, in [0, 1). ``mu_max=0`` gives plain SGD (Table 1's first column).

    >>> s = eq5(0.999)
    >>> [s(0), s(249), s(250), s(750)]
    [0.5, 0.5, 0.75, 0.875]
    >>> eq5(0.9)(10**6)
    0.9
    """
    _check_momentum("mu_max", mu_max)

    def schedule(t: int) -> float:
        _check_step(t)
        n = t // 250 + 1
        return min(1.0 - 1.0 / (2 * n), float(mu_max))

    return schedule


# Sec. 4.2: the RNN schedule's first 1000 updates are at mu = 0.9, whatever mu_0 is.
RNN_WARMUP_UPDATES = 1000


def warmup_of(kind: str) -> int:
    """Updates before the momentum a config sets takes effect under the schedule named ``kind``
    (trainables.train.member_schedules builds them): the RNN schedule's warm-up, else 0.

    >>> warmup_of("rnn"), warmup_of("eq5"), warmup_of("constant")
    (1000, 0, 0)
    """
    return RNN_WARMUP_UPDATES if kind == "rnn" else 0


def rnn(mu_0: float, warmup_updates: int = RNN_WARMUP_UPDATES, warmup_mu: float = 0.9) -> Schedule:
    r"""The RNN schedule of sec. 4.2: mu = 0.9 for the first 1000 updates, then ``mu_0``.

    .. math::
        \mu_t = \begin{cases} \mu_{\text{warmup}} & t < T_{\text{warmup}} \\
                              \mu_0 & t \ge T_{\text{warmup}} \end{cases}

    Args:
        mu_0: the momentum after the warm-up, in [0, 1).
        warmup_updates: number of updates at ``warmup_mu`` (the paper: 1000).
        warmup_mu: the warm-up momentum (the paper: 0.9).

    >>> s = rnn(0.998)
    >>> [s(0), s(999), s(1000)]
    [0.9, 0.9, 0.998]
    """
    _check_momentum("mu_0", mu_0)
    _check_count("warmup_updates", warmup_updates)
    _check_momentum("warmup_mu", warmup_mu)

    def schedule(t: int) -> float:
        _check_step(t)
        return float(warmup_mu) if t < warmup_updates else float(mu_0)

    return schedule


def constant(mu: float) -> Schedule:
    r"""A constant momentum, :math:`\mu_t = \mu` (Table 1's fixed-mu columns, plain SGD at 0).

    >>> constant(0.99)(12345)
    0.99
    """
    _check_momentum("mu", mu)

    def schedule(t: int) -> float:
        _check_step(t)
        return float(mu)

    return schedule


def with_final_phase(
    schedule: Schedule, total_updates: int, final_updates: int, final_mu: float = 0.9
) -> Schedule:
    r"""``schedule`` with the final low-momentum phase of sec. 3 (Table 2).

    .. math::
        \mu'_t = \begin{cases} \mu_t & t < T - N \\
                               \min(\mu_t, \mu_{\text{final}}) & t \ge T - N \end{cases}

    with T = ``total_updates`` and N = ``final_updates``. The paper reduces mu to 0.9 for the last
    1000 updates "unless mu is 0, in which case it is unchanged", without touching the learning
    rate. ``min`` never raises momentum, so mu = 0 (plain SGD) stays 0 and a mu already below
    ``final_mu`` is kept as it is.

    Args:
        schedule: the schedule of the primary ("transient") phase.
        total_updates: T, the number of updates of the whole run.
        final_updates: N, in [0, T]; 0 returns ``schedule`` itself.
        final_mu: the momentum cap of the final phase, in [0, 1).

    >>> s = with_final_phase(constant(0.999), total_updates=5000, final_updates=1000)
    >>> [s(3999), s(4000), s(4999)]
    [0.999, 0.9, 0.9]
    >>> with_final_phase(constant(0.0), 5000, 1000)(4500)
    0.0
    """
    _check_count("total_updates", total_updates, minimum=1)
    _check_count("final_updates", final_updates)
    if final_updates > total_updates:
        raise ValueError(
            f"final_updates={final_updates!r} is not allowed: must lie in "
            f"[0, total_updates={total_updates}]"
        )
    _check_momentum("final_mu", final_mu)
    if final_updates == 0:
        return schedule
    start = total_updates - final_updates

    def final_phase(t: int) -> float:
        mu = schedule(t)
        return min(mu, float(final_mu)) if t >= start else mu

    return final_phase


__all__ = ["RNN_WARMUP_UPDATES", "Schedule", "constant", "eq5", "rnn", "warmup_of", "with_final_phase"]
