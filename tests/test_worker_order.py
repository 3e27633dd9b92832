"""The suite's own test order under worksteal (tests/worker_order.py): a permutation that gives
each worker its share of the heavy modules first and cuts where worksteal cuts."""

from __future__ import annotations

from worker_order import MODULE_COST_S, module_of, share_sizes, worksteal_order


def _collection() -> list[str]:
    ids = [f"tests/test_quick_{k}.py::test_{i}" for k in range(6) for i in range(40)]
    ids += [f"{m}::test_{i}" for m in sorted(MODULE_COST_S) for i in range(3)]
    return sorted(ids)


def test_the_order_is_a_permutation_whose_shares_balance_the_heavy_modules():
    ids = _collection()
    for workers in (2, 3):
        order = worksteal_order(ids, workers)
        assert sorted(order) == list(range(len(ids)))
        cut, loads = 0, []
        for size in share_sizes(len(ids), workers):
            share = [ids[i] for i in order[cut:cut + size]]
            cut += size
            heavy = [module_of(n) for n in share if module_of(n) in MODULE_COST_S]
            # the heavy modules first, whole, then the quick tests
            assert [module_of(n) for n in share[:len(heavy)]] == heavy
            assert all(heavy.count(m) == 3 for m in heavy)
            loads.append(sum(MODULE_COST_S[m] for m in set(heavy)))
        # LPT: no share carries more than the lightest plus the largest module
        assert max(loads) - min(loads) <= max(MODULE_COST_S.values())
        assert sum(loads) == sum(MODULE_COST_S.values())


def test_share_sizes_are_worksteals_first_cut():
    assert share_sizes(969, 2) == [484, 485]
    assert share_sizes(10, 3) == [3, 3, 4]
