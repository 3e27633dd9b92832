"""Throughput of a whole study: the same reduced Table 5 addition grid run three ways in one process.

    python benchmarks/study_throughput.py                     # all three, 300 updates per run
    python benchmarks/study_throughput.py --only a,b --updates 500
    python benchmarks/study_throughput.py --quick --only c    # a smoke test: seconds, not minutes

The grid (Sutskever et al. 2013, Table 5, addition row, reduced): optimizer {cm, nag} x momentum
{0.0, 0.9, 0.98, 0.995} x lr (``--lrs``, default {3e-3, 1e-3, 3e-4, 1e-4}: the paper's
{1e-3 .. 1e-6} learn nothing in a few hundred updates) x 2 seeds = 64 runs; T = 20, minibatch
100, ``--updates`` updates each (default 300), an error reported every ``--report-every`` (100)
on 100 held-out sequences.

Momentum. The paper's RNN schedule holds mu = 0.9 for the first 1,000 updates and only then
switches to mu_0, so within 300 updates every mu_0 would train identically. Here the searched
field is ``mu_max`` with ``momentum_schedule: constant``: the momentum value of the grid applies
from the first update (the schedule after its warm-up, throughout), as search_spaces/quick.yaml
does. The plain loop of (c) does the same (torch.optim.SGD's ``momentum`` = that value).

The three ways, timed with time.perf_counter on one local Ray started once by this script (2
CPUs, 1 CPU per trial, at most 2 trials at once; Ray's start-up is not counted):

(a) ``fuse: auto``: a study spec run with ``study.run.runner.run`` into a temporary studies root
    (results DB, MLflow store and Tune's experiment under it): configurations that share the
    computation's shape train together as fused populations; ``repeats: 2`` trains the two seeds
    of a configuration as members of the same population.
(b) the same spec with ``fuse: off``: one configuration per Ray trial (its two seeds still fused,
    as ``repeats`` does): 32 Ray trials.
(c) what one would write without this project: Ray Tune + ``OptunaSearch`` with an Optuna
    ``GridSampler`` over the same grid with the seed as a fourth grid dimension, i.e. one
    configuration x seed per Ray trial (64 trials, ``num_samples`` = the grid's size), and
    ``MLflowLoggerCallback`` into a local SQLite MLflow store in the temporary directory, around a
    plain PyTorch loop: ``nn.RNN`` (tanh, 100 hidden units) + ``nn.Linear`` readout +
    ``torch.optim.SGD(lr, momentum, nesterov=(optimizer == "nag"))`` (no Nesterov flag at
    momentum 0, which torch refuses and which is plain SGD anyway), PyTorch's default
    initialization, on the addition problem made by ``addition_batch`` below (fixed length T;
    value channel and target centred). It reports the zero-one error (fraction of sequences whose
    final prediction is off by more than 0.04, as the project's) every report interval with
    ``tune.report``. It takes no checkpoints; (a) and (b) take the spec's default (one at every
    report), and record every metric point in their results database besides MLflow. Tune's own
    file loggers (CSV, JSON, TensorBoard) are off for all three, as the study service runs them
    (TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1): MLflow is the record, and the baseline is spared
    their writes.

Printed: each way's wall time (the study's run() call, or the Tuner's construction and fit),
member-updates per second (runs x updates / wall time), and how many times faster (a) is than (b)
and (c). For (a) against (b): every configuration's final error from the results database
(``study.api.trials``; mean over its seeds), the largest absolute difference and whether the best
configuration is the same (fused members reproduce solo runs, so both should be ~0 / yes). The
final errors of (c) are not compared: its initialization and data code are not the project's.

This is a measurement of one run on a shared host: run it on a quiet machine, and run it more
than once before quoting a figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Before anything imports ray: study.run.local_ray must be imported first for a loopback-only Ray.
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # all three: MLflow is the logger
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
try:
    from study.run.local_ray import start_local_ray
except Exception:  # the study package mid-rewrite: (c) still runs on a plain local Ray
    start_local_ray = None  # type: ignore[assignment]

import logging  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from addition_grid import LRS, MOMENTA, OPTIMIZERS, SEEDS  # noqa: E402  (shared with gpu_benchmark.py)
SEQ_LENGTH = 20
BATCH = 100
EVAL_CASES = 100
HIDDEN = 100
TOLERANCE = 0.04  # sec. 4.2: a prediction off by more than this is wrong
WAYS = {"a": "fused study (fuse: auto)", "b": "study, fuse: off", "c": "plain Ray Tune + Optuna + MLflow"}


# ----------------------------------------------------------------------------------------------
# (a), (b): the study service


def study_unavailable() -> str | None:
    """Why ways (a) and (b) cannot run in this checkout, or None."""
    try:
        from study.spec.model import StudySpec
    except Exception as exc:
        return f"the study package cannot be imported ({type(exc).__name__}: {exc})"
    if "fuse" not in StudySpec.model_fields:
        return (
            "this checkout's study specs have no `fuse` field yet (fuse: auto | off); ways (a) and (b) "
            "need it. Run only the plain way with --only c"
        )
    return None


def study_spec(name: str, grid: dict[str, list], updates: int, report_every: int, fuse: str) -> dict:
    return {
        "name": name,
        "description": f"study_throughput benchmark, fuse: {fuse}",
        "task": "addition",
        "config": {
            "updates": updates,
            "report_every": report_every,
            "seq_length": SEQ_LENGTH,
            "batch_size": BATCH,
            "eval_cases": EVAL_CASES,
            "momentum_schedule": "constant",
            "dtype": "float32",
        },
        "search": {
            "optimizer": {"type": "grid", "values": grid["optimizer"]},
            "mu_max": {"type": "grid", "values": grid["mu"]},
            "lr": {"type": "grid", "values": grid["lr"]},
        },
        "sampler": "grid",
        "repeats": len(SEEDS),
        "fuse": fuse,
        "resources": {"cpus": 1},
        "max_concurrent_trials": 2,
    }


def run_study(root: Path, name: str, spec_dict: dict) -> tuple[float, str]:
    """(wall seconds, final state) of one study run in this process."""
    from study.run import runner
    from study.locations import resolve
    from study.spec.model import load_spec

    spec = load_spec(spec_dict)
    loc = resolve(spec.name, root, None, None, None)
    t0 = time.perf_counter()
    state = runner.run(spec, loc)
    return time.perf_counter() - t0, state


def overheads(root: Path, name: str) -> str:
    """The study's own overhead figures, which the runner logs on its MLflow parent run: the
    driver's bookkeeping against the trials' compute, a trial's set-up before its first update,
    and the gap between two trials in one worker process (study/run/trial.py, study/record/recorder.py)."""
    from mlflow import MlflowClient

    from study import api

    uri = f"sqlite:///{root / name / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(name)
    parent = c.search_runs([exp.experiment_id], filter_string="tags.`momentum_study.role` = 'parent'")[0]
    m = parent.data.metrics
    book, compute = m.get("driver_bookkeeping_s", float("nan")), m.get("trial_compute_s", float("nan"))
    trials = api.trials(name, directory=str(root))
    return (f"{trials['population'].nunique()} Ray trials; driver bookkeeping {book:.2f} s = "
            f"{100 * book / compute:.1f}% of {compute:.1f} s trial compute; trial set-up before its first update "
            f"mean {m.get('trial_setup_s_mean', float('nan')):.2f} s, max {m.get('trial_setup_s_max', float('nan')):.2f} s; "
            f"gap after the previous trial in the same worker mean {m.get('trial_gap_s_mean', float('nan')):.2f} s, "
            f"max {m.get('trial_gap_s_max', float('nan')):.2f} s")


def final_errors(root: Path, name: str) -> dict[tuple, float]:
    """(optimizer, mu_max, lr) -> the configuration's final error (its metric_value: the mean over
    its seeds), from the study's results database."""
    from study import api

    df = api.trials(name, directory=str(root))
    out: dict[tuple, float] = {}
    for _, row in df.iterrows():
        key = (row["optimizer"], float(row["mu_max"]), float(row["lr"]))
        value = row["metric_value"]
        out[key] = float("nan") if value is None else float(value)
    return out


def best_configs(errors: dict[tuple, float]) -> set[tuple]:
    finite = {k: v for k, v in errors.items() if np.isfinite(v)}
    if not finite:
        return set()
    low = min(finite.values())
    return {k for k, v in finite.items() if v <= low + 1e-12}


def compare(a: dict[tuple, float], b: dict[tuple, float]) -> None:
    print("\n(a) against (b), final error per configuration (results DB, mean over seeds):")
    common = sorted(set(a) & set(b))
    for name, missing in (("(a)", set(b) - set(a)), ("(b)", set(a) - set(b))):
        if missing:
            print(f"  {len(missing)} configurations missing from {name}: {sorted(missing)[:4]}...")
    if not common:
        print("  no configuration in both")
        return
    diffs = [abs(a[k] - b[k]) for k in common]
    nan_mismatch = sum(np.isnan(a[k]) != np.isnan(b[k]) for k in common)
    finite = [d for d in diffs if np.isfinite(d)]
    print(f"  configurations compared: {len(common)}; max |error(a) - error(b)| = "
          f"{max(finite) if finite else float('nan'):.3g}" + (f"; NaN in one only: {nan_mismatch}" if nan_mismatch else ""))
    best_a, best_b = best_configs(a), best_configs(b)
    fmt = lambda s: ", ".join(f"{o} mu {m:g} lr {lr:g}" for o, m, lr in sorted(s)) or "(none)"  # noqa: E731
    print(f"  best (a): {fmt(best_a)}: error {min(a[k] for k in best_a) if best_a else float('nan'):.4g}")
    print(f"  best (b): {fmt(best_b)}: error {min(b[k] for k in best_b) if best_b else float('nan'):.4g}")
    print(f"  same best configuration: {'yes' if best_a == best_b and best_a else 'no'}")


# ----------------------------------------------------------------------------------------------
# (c): what a user writes without this project


def addition_batch(rng: np.random.Generator, batch: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """The addition problem: inputs (T, B, 2) float32 (a value in [0, 1], and a marker that is 1 at
    the two steps to add), targets (B,) the sum of the two marked values. One mark in the first
    tenth of the sequence, the other before its middle; value channel and target centred."""
    values = rng.random((length, batch))
    i = rng.integers(0, max(1, length // 10), batch)
    j = rng.integers(max(1, length // 10), length // 2, batch)
    marker = np.zeros((length, batch))
    cols = np.arange(batch)
    marker[i, cols] = 1.0
    marker[j, cols] = 1.0
    inputs = np.stack([values - 0.5, marker], axis=-1).astype(np.float32)
    targets = (values[i, cols] + values[j, cols] - 1.0).astype(np.float32)
    return inputs, targets


def train_plain(config: dict, settings: dict) -> None:
    """One configuration x seed: a Ray Tune function trainable."""
    from ray import tune

    seed = int(config["seed"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_eval, y_eval = (torch.from_numpy(a) for a in addition_batch(np.random.default_rng(10_000 + seed), EVAL_CASES, SEQ_LENGTH))
    rnn = nn.RNN(2, HIDDEN, nonlinearity="tanh")
    readout = nn.Linear(HIDDEN, 1)
    mu = float(config["mu"])
    opt = torch.optim.SGD([*rnn.parameters(), *readout.parameters()], lr=float(config["lr"]), momentum=mu,
                          nesterov=config["optimizer"] == "nag" and mu > 0)
    for step in range(1, settings["updates"] + 1):
        x, y = (torch.from_numpy(a) for a in addition_batch(rng, BATCH, SEQ_LENGTH))
        out = readout(rnn(x)[0][-1]).squeeze(-1)
        loss = (out - y).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % settings["report_every"] == 0 or step == settings["updates"]:
            with torch.no_grad():
                pred = readout(rnn(x_eval)[0][-1]).squeeze(-1)
                # NaN counts as wrong: not (|d| <= tol).
                error = float((~((pred - y_eval).abs() <= TOLERANCE)).float().mean())
                eval_loss = float((pred - y_eval).pow(2).mean())
            tune.report({"error": error, "loss": eval_loss, "step": step})


def run_plain(tmp: Path, name: str, grid: dict[str, list], updates: int, report_every: int) -> tuple[float, Any]:
    import optuna
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    space = {"optimizer": grid["optimizer"], "mu": grid["mu"], "lr": grid["lr"], "seed": SEEDS}
    size = int(np.prod([len(v) for v in space.values()]))
    where = tmp / name
    where.mkdir(parents=True)
    t0 = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(
            tune.with_parameters(train_plain, settings={"updates": updates, "report_every": report_every}),
            {"cpu": 1},
        ),
        param_space={k: tune.choice(v) for k, v in space.items()},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(sampler=optuna.samplers.GridSampler(space, seed=0), metric="error", mode="min"),
            num_samples=size,
            max_concurrent_trials=2,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(where / "ray_results"),
            callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{where / 'mlflow.db'}", experiment_name=name)],
            verbose=0,
        ),
    )
    results = tuner.fit()
    return time.perf_counter() - t0, results


def summarize_plain(results: Any, runs: int) -> None:
    seen: dict[tuple, list[float]] = {}
    points = set()
    failed = 0
    for r in results:
        if r.error is not None or not r.metrics or "error" not in r.metrics:
            failed += 1
            continue
        c = r.config
        points.add((c["optimizer"], c["mu"], c["lr"], c["seed"]))
        seen.setdefault((c["optimizer"], float(c["mu"]), float(c["lr"])), []).append(float(r.metrics["error"]))
    note = f"; {failed} failed" if failed else ""
    if len(points) != runs:
        note += f"; only {len(points)} distinct configuration x seed points of {runs} (GridSampler repeated some)"
    means = {k: float(np.mean(v)) for k, v in seen.items()}
    best = best_configs(means)
    shown = ", ".join(f"{o} mu {m:g} lr {lr:g}" for o, m, lr in sorted(best)[:3])
    print(f"  (c) {len(results)} Ray trials{note}; best (mean over seeds): {shown}: "
          f"error {min(means.values()) if means else float('nan'):.4g} (not comparable with (a)/(b))")


# ----------------------------------------------------------------------------------------------


def quiet() -> None:
    # Without Tune's file loggers (disabled above for all three ways, as study/run/tuner.py does) the
    # ExperimentAnalysis of (c) warns about every trial's missing result.json; the results are in
    # memory and in MLflow.
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)


def start_ray() -> None:
    import ray

    if start_local_ray is not None:
        start_local_ray(log_to_driver=False, num_cpus=2)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def main() -> int:
    global BATCH
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--updates", type=int, default=None, help="updates per run (default 300; --quick: 40)")
    ap.add_argument("--report-every", type=int, default=None, help="updates between reports (default 100; --quick: 20)")
    ap.add_argument("--lrs", type=float, nargs="+", default=LRS, help=f"the learning-rate grid (default {LRS})")
    ap.add_argument("--batch", type=int, default=BATCH, help=f"minibatch (default {BATCH}, the paper's; smaller "
                    "batches show where fusing pays on a CPU: per-operation overhead, as on a GPU)")
    ap.add_argument("--quick", action="store_true", help="tiny: nag only, the first 2 learning rates, 40 updates")
    ap.add_argument("--only", default="a,b,c", help="which ways, comma-separated: a (fuse auto), b (fuse off), c (plain)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary studies root (printed) afterwards")
    args = ap.parse_args()
    BATCH = args.batch
    ways = [w.strip() for w in args.only.split(",") if w.strip()]
    bad = [w for w in ways if w not in WAYS]
    if bad or not ways:
        ap.error(f"--only {args.only!r}: choose from a, b, c (comma-separated)")
    updates = args.updates or (40 if args.quick else 300)
    report_every = min(args.report_every or (20 if args.quick else 100), updates)
    grid = {
        "optimizer": ["nag"] if args.quick else OPTIMIZERS,
        "mu": MOMENTA,
        "lr": args.lrs[:2] if args.quick else args.lrs,
    }
    configs = len(grid["optimizer"]) * len(grid["mu"]) * len(grid["lr"])
    runs = configs * len(SEEDS)

    # This benchmark's locations only: nothing from the environment sends it elsewhere.
    for var in ("MOMENTUM_STUDY_DIR", "MOMENTUM_STUDY_RESULTS_DB", "MLFLOW_TRACKING_URI", "RAY_ADDRESS", "MOMENTUM_STUDY_STORAGE"):
        os.environ.pop(var, None)

    if any(w in ways for w in "ab"):
        why = study_unavailable()
        if why:
            print(f"ways (a) and (b) skipped: {why}", file=sys.stderr)
            ways = [w for w in ways if w == "c"]
            if not ways:
                return 2

    import ray

    print(f"torch {torch.__version__}, ray {ray.__version__}, {os.cpu_count()} CPUs on this host; local Ray "
          "with 2 CPUs, 1 CPU per trial, at most 2 trials at once")
    print(f"grid: optimizer {grid['optimizer']} x momentum {grid['mu']} x lr {grid['lr']} x seeds {SEEDS} = "
          f"{runs} runs; T = {SEQ_LENGTH}, batch {BATCH}, {updates} updates, report every {report_every}, "
          "constant momentum")
    root = Path(tempfile.mkdtemp(prefix="study-throughput-"))
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    walls: dict[str, float] = {}
    names: dict[str, str] = {}
    quiet()
    start_ray()
    try:
        for way in ways:
            name = f"throughput-{way}-{stamp}"
            print(f"\n({way}) {WAYS[way]}: running {runs} runs ...", flush=True)
            try:
                if way in "ab":
                    spec = study_spec(name, grid, updates, report_every, "auto" if way == "a" else "off")
                    wall, state = run_study(root, name, spec)
                    if state != "completed":
                        print(f"  ({way}) the study ended {state!r}, not completed: its figure is not a full run")
                    print(f"  ({way}) {overheads(root, name)}")
                else:
                    wall, results = run_plain(root, name, grid, updates, report_every)
                    summarize_plain(results, runs)
            except Exception:
                print(f"  ({way}) failed:\n{traceback.format_exc()}", file=sys.stderr)
                continue
            walls[way], names[way] = wall, name
            print(f"  ({way}) wall {wall:.1f} s, {runs * updates / wall:.1f} member-updates/s", flush=True)
    finally:
        ray.shutdown()

    print(f"\n{'way':<42}{'wall s':>10}{'member-upd/s':>15}")
    for way, wall in walls.items():
        print(f"({way}) {WAYS[way]:<38}{wall:>10.1f}{runs * updates / wall:>15.1f}")
    if "a" in walls:
        for other in ("b", "c"):
            if other in walls:
                print(f"({other}) / (a): {walls[other] / walls['a']:.2f}x  ((a) is {walls[other] / walls['a']:.2f} times as fast)")
    if "a" in names and "b" in names:
        try:
            compare(final_errors(root, names["a"]), final_errors(root, names["b"]))
        except Exception:
            print(f"comparison of (a) and (b) failed:\n{traceback.format_exc()}", file=sys.stderr)
    if args.keep:
        print(f"\nstudies root kept: {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return 0 if len(walls) == len(ways) else 1


if __name__ == "__main__":
    sys.exit(main())
