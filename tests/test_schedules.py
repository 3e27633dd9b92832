"""Momentum schedules against the paper's formulas (Eq. 5, sec. 4.2, sec. 3 / Table 2)."""

from __future__ import annotations

import math

import pytest

from trainables.schedules import constant, eq5, rnn, with_final_phase


def _eq5_as_written(t: int, mu_max: float) -> float:
    # Eq. 5 literally, with floating-point log2 and power, as an independent reference.
    return min(1 - 2 ** (-1 - math.log2(math.floor(t / 250) + 1)), mu_max)


@pytest.mark.parametrize(
    ("t", "expected"),
    [(0, 0.5), (249, 0.5), (250, 0.75), (499, 0.75), (500, 1 - 1 / 6), (749, 1 - 1 / 6), (750, 0.875)],
)
def test_eq5_values_at_block_boundaries(t: int, expected: float) -> None:
    assert eq5(0.999)(t) == expected


def test_eq5_is_capped_at_mu_max_for_large_t() -> None:
    s = eq5(0.995)
    # 1 - 1/(2n) first exceeds 0.995 at n = 101, i.e. t = 25000.
    assert s(24_999) == pytest.approx(1 - 1 / 200)
    assert s(25_000) == 0.995
    assert s(750_000) == 0.995
    assert eq5(0.0)(10_000) == 0.0


def test_eq5_matches_the_formula_as_written() -> None:
    for mu_max in (0.9, 0.99, 0.995, 0.999):
        s = eq5(mu_max)
        for t in list(range(0, 3000, 7)) + [10**5, 750_000 - 1]:
            assert s(t) == pytest.approx(_eq5_as_written(t, mu_max), rel=0, abs=1e-15)


def test_eq5_is_nondecreasing() -> None:
    s = eq5(0.999)
    values = [s(t) for t in range(0, 200_000, 50)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_rnn_schedule_switches_from_warmup_at_update_1000() -> None:
    s = rnn(0.998)
    assert (s(0), s(999), s(1000), s(10**6)) == (0.9, 0.9, 0.998, 0.998)
    assert rnn(0.5, warmup_updates=10, warmup_mu=0.0)(9) == 0.0
    assert rnn(0.5, warmup_updates=0)(0) == 0.5


def test_constant_schedule() -> None:
    assert {constant(0.99)(t) for t in (0, 1, 10**6)} == {0.99}


def test_final_phase_caps_mu_at_final_mu_in_last_updates_only() -> None:
    s = with_final_phase(eq5(0.999), total_updates=10_000, final_updates=1000)
    base = eq5(0.999)
    for t in range(0, 9000, 13):
        assert s(t) == base(t)
    assert base(8999) > 0.9
    assert s(9000) == 0.9 and s(9999) == 0.9


def test_final_phase_never_raises_momentum() -> None:
    # "reduce mu to 0.9 unless mu is 0": min() keeps 0 at 0 and any mu below 0.9 as it is.
    assert with_final_phase(constant(0.0), 100, 10)(95) == 0.0
    assert with_final_phase(constant(0.5), 100, 10)(95) == 0.5
    assert with_final_phase(eq5(0.999), 300, 100)(200) == 0.5  # Eq. 5 is still at 0.5 there


def test_final_phase_with_zero_updates_is_the_schedule_itself() -> None:
    base = constant(0.99)
    assert with_final_phase(base, 100, 0) is base


def test_final_phase_composes_with_rnn_schedule() -> None:
    s = with_final_phase(rnn(0.999), total_updates=5000, final_updates=500, final_mu=0.95)
    assert (s(999), s(1000), s(4499), s(4500)) == (0.9, 0.999, 0.999, 0.95)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: eq5(1.0), r"mu_max=1\.0 is not allowed: momentum must lie in \[0, 1\)"),
        (lambda: eq5(-0.1), r"mu_max=-0\.1 is not allowed"),
        (lambda: rnn(1.5), r"mu_0=1\.5 is not allowed: momentum must lie in \[0, 1\)"),
        (lambda: rnn(0.9, warmup_updates=-1), r"warmup_updates=-1 is not allowed: must be an integer >= 0"),
        (lambda: rnn(0.9, warmup_mu=1.0), r"warmup_mu=1\.0 is not allowed"),
        (lambda: constant(1.0), r"mu=1\.0 is not allowed"),
        (lambda: with_final_phase(constant(0.9), 0, 0), r"total_updates=0 is not allowed: must be an integer >= 1"),
        (lambda: with_final_phase(constant(0.9), 100, -1), r"final_updates=-1 is not allowed"),
        (
            lambda: with_final_phase(constant(0.9), 100, 101),
            r"final_updates=101 is not allowed: must lie in \[0, total_updates=100\]",
        ),
        (lambda: with_final_phase(constant(0.9), 100, 10, final_mu=1.0), r"final_mu=1\.0 is not allowed"),
    ],
)
def test_schedule_arguments_are_validated_with_named_errors(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_negative_update_index_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"t=-1 is not allowed"):
        eq5(0.99)(-1)
