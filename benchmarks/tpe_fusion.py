"""TPE with fusion against TPE without it, on a reduced Table 5 search, both in one process.

    python benchmarks/tpe_fusion.py             # under a minute on two quiet CPU cores (docs/benchmarks.md)
    python benchmarks/tpe_fusion.py --updates 2000   # longer runs, that learn something
    python benchmarks/tpe_fusion.py --scheduler fifo  # no pruning: every configuration to its end
    python benchmarks/tpe_fusion.py --quick     # a smoke test: seconds, not minutes

The search (Sutskever et al. 2013, Table 5, addition row, reduced): optimizer {cm, nag}, momentum
mu in [0.5, 0.995] (searched as 1 - mu on a log scale, ``transform: one_minus``; constant from the
first update, as benchmarks/study_throughput.py explains) and lr in [1e-4, 3e-2] (log), T = 20,
``--updates`` updates (default 600), an error reported every 100 on 100 held-out sequences, two
seeds per configuration (``repeats: 2``), minibatch ``--batch`` (default 10: small minibatches
are where fusing pays on a CPU, docs/benchmarks.md "Study throughput"). TPE (seed 0,
``n_startup_trials`` 8) proposes ``--trials`` configurations (default 40) and ASHA (grace period
1 report, reduction factor 3) stops the poor ones; at most 2 Ray trials at once on a local Ray with
2 CPUs, 1 CPU per trial.

The two ways, each a study spec run with ``study.run.runner.run`` into a temporary studies root:

(a) ``fuse: auto``: the searcher paces TPE (study/plan/pacing.py: the 8 start-up suggestions, then
    at most ceil(32 / 4) = 8 without a result, the 2 trial slots sharing both, each population at
    most 4) and each Ray trial trains what it was handed as one fused population; the rungs
    compare every configuration of the study (study/run/rung_board.py).
(b) ``fuse: off``: one configuration per Ray trial, Ray Tune's ASHAScheduler, the same pacing
    (which 2 trials at once never reach).

Printed for each: the wall time of the run() call, the Ray trials, and the best configuration (the
lowest final error, the mean over its seeds, among those that completed) with its values; then
the wall-time ratio (b) / (a) and whether (a)'s best is at least as good as (b)'s. One run on a
shared host: quote it with its conditions.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from study.run.local_ray import start_local_ray  # noqa: E402  (before anything imports ray)


def spec(name: str, fuse: str, trials: int, updates: int, batch: int, scheduler: str = "asha") -> dict:
    return {
        "name": name,
        "description": f"tpe_fusion benchmark, fuse: {fuse}",
        "task": "addition",
        "config": {"updates": updates, "report_every": 100 if updates >= 200 else 10, "seq_length": 20,
                   "batch_size": batch, "eval_cases": 100, "momentum_schedule": "constant", "dtype": "float32"},
        "search": {
            "optimizer": {"type": "categorical", "values": ["cm", "nag"]},
            "mu_max": {"type": "float", "low": 0.005, "high": 0.5, "log": True, "transform": "one_minus"},
            "lr": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
        },
        "sampler": {"type": "tpe", "seed": 0, "options": {"n_startup_trials": 8}},
        "num_samples": trials,
        "repeats": 2,
        "fuse": fuse,
        "scheduler": ({"type": "asha", "grace_period": 1, "reduction_factor": 3} if scheduler == "asha"
                      else {"type": "fifo"}),
        "resources": {"cpus": 1, "gpus": 0},
        "max_concurrent_trials": 2,
    }


def run(root: Path, raw: dict) -> dict:
    from study import api
    from study.locations import resolve
    from study.run import runner
    from study.spec.model import load_spec

    s = load_spec(raw)
    loc = resolve(s.name, root, None, None, None)
    t0 = time.perf_counter()
    state = runner.run(s, loc)
    wall = time.perf_counter() - t0
    t = api.trials(s.name, results_db=loc.results_db)
    done = t[t["state"] == "completed"].sort_values("metric_value")
    best = done.iloc[0] if len(done) else None
    return {"state": state, "wall": wall, "populations": t["population"].nunique(), "configs": len(t),
            "states": t["state"].value_counts().to_dict(), "best": best}


def describe(way: str, r: dict) -> str:
    b = r["best"]
    best = "none completed" if b is None else (
        f"best error {b['metric_value']:.4f} ({b['optimizer']}, mu_max {b['mu_max']:.4f}, lr {b['lr']:.2e})")
    return (f"{way}: {r['state']}, wall {r['wall']:.1f} s, {r['configs']} configurations in {r['populations']} "
            f"Ray trials {r['states']}; {best}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--updates", type=int, default=600)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--scheduler", choices=["asha", "fifo"], default="asha",
                    help="fifo: every configuration trains to the end (no pruning), in both ways")
    ap.add_argument("--quick", action="store_true", help="12 configurations of 40 updates")
    args = ap.parse_args()
    trials, updates = (12, 40) if args.quick else (args.trials, args.updates)
    start_local_ray(log_to_driver=False, num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fused = run(root, spec("tpe-fused", "auto", trials, updates, args.batch, args.scheduler))
        print(describe("(a) TPE, fuse: auto", fused), flush=True)
        solo = run(root, spec("tpe-solo", "off", trials, updates, args.batch, args.scheduler))
        print(describe("(b) TPE, fuse: off ", solo), flush=True)
    a, b = fused["best"], solo["best"]
    print(f"wall time (b) / (a): {solo['wall'] / fused['wall']:.2f}x")
    if a is not None and b is not None:
        print(f"best error (a) {a['metric_value']:.4f} vs (b) {b['metric_value']:.4f}: "
              f"(a) {'at least as good' if a['metric_value'] <= b['metric_value'] else 'worse'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
