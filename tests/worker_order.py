"""The order of the collected tests under pytest-xdist's worksteal, so the suite's wall time is its
work divided by the workers, not that plus a long test run alone at the end.

worksteal hands each worker a contiguous share of the collection by count (the first half to one
of two) and, when a worker runs dry, moves the tail half of the longest queue to it; the last tests
of a queue are never moved. In file order one half held most of the Ray-heavy modules
(test_cli_output, test_cluster, test_evidence, test_faults ...), so the end of the run waited on
them. Here the heavy modules, whole (their module-scoped fixtures are set up once), are dealt to
the workers' shares by their measured cost, longest first onto the lighter share (LPT), and the
quick tests fill each share to the count worksteal cuts it at: each share starts with its heavy
modules and ends with quick tests, so what is moved late, and what ends the run, is quick. Only the order changes; no test depends on it (every test sets up what it reads).

pytest-xdist has no cost-aware ordering of its own (its `loadfile`/`loadscope` group by file, not
by cost), hence this hook.
"""

from __future__ import annotations

from typing import Any, Sequence

# Seconds of a module's slow tests on a quiet 2-core machine (pytest --durations, summed per
# module); the modules not listed are quick. Rough figures are enough: they only decide which
# share a module joins and how early it runs.
MODULE_COST_S = {
    "tests/test_faults.py": 295, "tests/test_cli_output.py": 160, "tests/test_study_states.py": 100,
    "tests/test_cluster.py": 80, "tests/test_postgres.py": 60, "tests/test_fused_studies.py": 60,
    "tests/test_evidence.py": 55, "tests/test_study_resume.py": 50, "tests/test_plan.py": 50,
    "tests/test_main_example.py": 50, "tests/test_study_ui.py": 50, "tests/test_cli_best.py": 30,
    "tests/test_local_ray.py": 30, "tests/test_pacing.py": 25, "tests/test_locations.py": 25,
    "tests/test_memory_limits.py": 20, "tests/test_gpu_benchmark.py": 15, "tests/test_report.py": 15,
}


def module_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def share_sizes(n: int, workers: int) -> list[int]:
    """How many tests worksteal sends each worker first: the rest of the collection divided by the
    workers still without tests, in turn."""
    sizes = []
    for w in range(workers):
        sizes.append((n - sum(sizes)) // (workers - w))
    return sizes


def worksteal_order(nodeids: Sequence[str], workers: int) -> list[int]:
    """Indices of ``nodeids`` in the order to run them on ``workers`` worksteal workers."""
    modules: dict[str, list[int]] = {}
    for i, nodeid in enumerate(nodeids):
        modules.setdefault(module_of(nodeid), []).append(i)
    shares: list[list[int]] = [[] for _ in range(workers)]
    loads = [0.0] * workers
    heavy = sorted((m for m in modules if m in MODULE_COST_S), key=lambda m: (-MODULE_COST_S[m], m))
    for m in heavy:  # longest first onto the lightest share
        w = loads.index(min(loads))
        shares[w].extend(modules[m])
        loads[w] += MODULE_COST_S[m]
    # The quick tests fill each share to the count worksteal cuts it at, in file order: a quick
    # module may be split between two shares (its fixtures set up twice, which is cheap).
    quick = [i for m in modules if m not in MODULE_COST_S for i in modules[m]]
    for share, size in zip(shares, share_sizes(len(nodeids), workers)):
        room = max(0, size - len(share))
        share.extend(quick[:room])
        del quick[:room]
    shares[-1].extend(quick)  # where the heavy tests alone overfill a share
    return [i for share in shares for i in share]


def reorder(config: Any, items: list) -> None:
    """pytest_collection_modifyitems: on an xdist worker (``config.workerinput``; xdist sets its
    ``dist`` option to "no" there, so the mode is not known: another mode just runs in this order
    too) of two or more, put ``items`` in ``worksteal_order``; every worker computes the same order."""
    workerinput = getattr(config, "workerinput", None)
    if not workerinput:
        return
    workers = int(workerinput.get("workercount", 1))
    if workers < 2:
        return
    order = worksteal_order([item.nodeid for item in items], workers)
    items[:] = [items[i] for i in order]
