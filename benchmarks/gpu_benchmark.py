"""One GPU benchmark: rates, a 64-configuration study three ways, kernels, GPU busy time and
float64 gaps, with nothing but the trainables' own dependencies (torch, numpy, pydantic).

    python benchmarks/gpu_benchmark.py --device cuda                  # under 6 minutes on one GPU
    python benchmarks/gpu_benchmark.py --device cuda --time-budget 200 --tasks addition mem5
    python benchmarks/gpu_benchmark.py --device cpu --quick           # tiny sizes: a smoke test

No Ray, MLflow, Optuna or SQL: it drives ``trainables.train`` directly, as a Ray trial would, and
the plain PyTorch loops of ``updates_per_second.py``. What it measures (docs/benchmarks.md, "GPU
benchmark", says how to read each figure):

1. rates: member-updates per second of every task at K = 1, 16, 64, 256, 1024 (those that the
   task's memory estimate fits in the device's free memory), and the updates per second of the
   plain loop (cuDNN ``nn.RNN`` / ``nn.Sequential`` + ``torch.optim.SGD``, one configuration,
   same sizes). Each point runs for a fixed short wall time (set by ``--time-budget``), not a fixed
   number of updates; set-up and the first two report intervals (warm-up) are not counted.
   Addition and mem5 at K = 1 and 256 run a second time with CUDA graphs off (``cuda_graphs:
   false``): updates/s with and without graphs (on the CPU both runs are eager).
2. kernels per update and busy fraction, from ``torch.profiler`` over one report interval at
   the ``--profile-ks`` points: CUDA kernels (copies and memsets not counted) per update, and the
   union of GPU activity over the interval's wall time. On the CPU: ATen calls made outside
   any other (by Python code or autograd) and their time over the wall time.
3. the 64-configuration study (the addition grid of ``addition_grid.py`` at T = 80, 200 updates
   each) three ways: one fused population of 64; one configuration at a time in this process;
   8 processes sharing the device, each training 8 configurations one at a time (what a
   one-trial-per-process tuner with fractional GPUs does). Where the time budget cuts a way
   short, its wall time is extrapolated from the configurations it finished (and says so).
4. float64 gaps after N updates, as the largest relative weight difference (max over weight
   tensors of max|a - b| / max|b|): member k of a population against its solo run, and a run on
   the CPU against the same run on the device.

Writes ``gpu_benchmark.json`` (every figure) and ``gpu_benchmark.md`` (a section to paste into
docs/benchmarks.md) into ``--out``.

Dependencies on a bare GPU machine: torch and numpy, and pydantic (trainables/config.py validates
the config with it). Where pydantic is not installed, install it into a folder here and carry it:
``pip install --target .gpu-deps pydantic`` (same Python version as the GPU machine), then
``PYTHONPATH=.gpu-deps python benchmarks/gpu_benchmark.py --device cuda``.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402

try:
    from trainables import train  # noqa: E402
    from trainables.config import parse_config  # noqa: E402
except ModuleNotFoundError as exc:  # pydantic, most likely, on a bare GPU machine
    sys.exit(
        f"gpu_benchmark: cannot import the trainables ({exc}). They need torch, numpy and pydantic; "
        "install pydantic into a folder (pip install --target .gpu-deps pydantic) and run with "
        "PYTHONPATH=.gpu-deps"
    )

import addition_grid  # noqa: E402
from updates_per_second import AUTOENCODERS, RNN_TASKS, config, plain_autoencoder_step, plain_rnn_step  # noqa: E402

ALL_TASKS = (*AUTOENCODERS, *RNN_TASKS)
STUDY_TASK = "addition"
GAP_MEMBERS = 3
# The gaps' order, so that a short budget keeps the telling ones: the RNN problems' data stream
# and an autoencoder first, the large autoencoders (slow to set up on the host) last.
GAP_ORDER = ["addition", "curves", "mem5", "multiplication", "mem20", "mnist", "faces"]
# Shares of the time budget; a section that finishes early leaves its rest to the next ones.
SHARES = {"rates": 0.5, "study": 0.33, "gaps": 0.17}
# The points also measured with CUDA graphs off (cuda_graphs: false), to show what graphs give.
GRAPH_TASKS, GRAPH_KS = ("addition", "mem5"), (1, 256)
FAILURES: list[str] = []  # sections that failed, recorded in the JSON's meta


# ----------------------------------------------------------------------------------------------
# clocks, budget, memory


def clock(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the queue drained: the time of the work, not of its launch
    return time.perf_counter()


class Budget:
    """Deadlines per section out of one total, so the whole run stays within ``total`` seconds."""

    def __init__(self, total: float) -> None:
        self.total, self.start = total, time.perf_counter()
        self.left_shares = dict(SHARES)

    def section(self, name: str) -> float:
        """The deadline (perf_counter) of section ``name``: its share of the time still left."""
        share = self.left_shares.pop(name)
        left = self.total - (time.perf_counter() - self.start)
        return time.perf_counter() + max(0.0, left) * share / (share + sum(self.left_shares.values()))


def free_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return None


def estimated_bytes(cfg: dict, k: int) -> int | None:
    """The task's own memory estimate for K members (trainables/tasks/memory.py), if it has one."""
    try:
        from trainables.tasks.memory import estimate
    except ImportError:
        return None
    try:
        return estimate(parse_config(cfg)).total(k)
    except (AttributeError, NotImplementedError):
        return None


# ----------------------------------------------------------------------------------------------
# the profiler


def profile_counts(prof: Any, device: torch.device, wall_s: float) -> tuple[int, float]:
    """(kernels, busy fraction) of a finished torch.profiler window of ``wall_s`` seconds. CUDA:
    kernels (not copies or memsets) and the union of all GPU activity; CPU: the ATen calls made
    outside any other ATen call (by Python code or by autograd) and the union of their spans."""
    events = prof.events()
    if device.type == "cuda":
        gpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        kernels = [e for e in gpu if not e.name.startswith(("Memcpy", "Memset"))]
        spans = [(e.time_range.start, e.time_range.end) for e in gpu]
    else:
        kernels = [e for e in events if e.name.startswith("aten::") and not _inside_aten(e)]
        spans = [(e.time_range.start, e.time_range.end) for e in kernels]
    busy_us, end = 0.0, -math.inf
    for a, b in sorted(spans):
        if b > end:
            busy_us += b - max(a, end)
            end = b
    return len(kernels), min(1.0, busy_us / 1e6 / wall_s) if wall_s > 0 else float("nan")


def _inside_aten(event: Any) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def new_profiler(device: torch.device) -> Any:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    return profile(activities=acts)


# ----------------------------------------------------------------------------------------------
# 1 + 2: rates, kernels, busy fraction


def point_config(task: str, k: int, device: torch.device, report_every: int, quick: bool) -> dict:
    cfg = config(task, k, 10**8, device.type)
    # Reports every few updates with a small evaluation: a point can stop after any report, and a
    # report costs little (an evaluation of a few cases and a read of the device).
    cfg.update(report_every=report_every, eval_cases=10)
    if quick and task in AUTOENCODERS:
        cfg.update(train_cases=400)
    return cfg


def measure_ours(task: str, k: int, device: torch.device, window_s: float, report_every: int,
                 profile: bool, quick: bool, extra: dict | None = None) -> dict:
    """Member-updates/s of ``train`` for a population of K: every interval after the first two
    (set-up, warm-up) until ``window_s`` seconds have passed; then, if ``profile``, one interval
    under the profiler."""
    cfg = {**point_config(task, k, device, report_every, quick), **(extra or {})}
    times: list[float] = []
    state: dict[str, Any] = {}
    t_call = clock(device)

    def reporter(report) -> list[int] | None:
        now = clock(device)
        if "prof" in state:
            wall = now - state["prof_t0"]  # before stop(): its processing is no part of the window
            state["prof"].stop()
            state["profile"] = profile_counts(state["prof"], device, wall)
            return list(range(k))
        times.append(now)
        if len(times) >= 3 and times[-1] - times[1] >= window_s:
            if not profile:
                return list(range(k))
            state["prof"] = new_profiler(device)
            state["prof"].start()
            state["prof_t0"] = clock(device)
        return None

    train(cfg, reporter)
    if len(times) < 3:
        raise RuntimeError(f"the run ended after {len(times)} reports (every member diverged?)")
    measured = times[-1] - times[1]
    updates = (len(times) - 2) * report_every
    out = {
        "setup_s": times[0] - t_call,
        "measured_updates": updates,
        "measured_s": measured,
        "updates_per_s": updates / measured,
        "member_updates_per_s": k * updates / measured,
    }
    if "profile" in state:
        kernels, busy = state["profile"]
        out["profile"] = {"kernels_per_update": kernels / report_every, "busy_fraction": busy,
                          "window_updates": report_every}
    return out


def plain_step(task: str, device: torch.device) -> Callable[[], None]:
    return (plain_autoencoder_step if task in AUTOENCODERS else plain_rnn_step)(task, device)


def measure_plain(task: str, device: torch.device, window_s: float, profile_steps: int) -> dict:
    """Updates/s of the plain loop (best of three stretches of window_s / 3), and its profile."""
    step = plain_step(task, device)
    for _ in range(3):
        step()
    rates = []
    for _ in range(3):
        n, t0 = 0, clock(device)
        while n < 2 or time.perf_counter() - t0 < window_s / 3:
            step()
            n += 1
        rates.append(n / (clock(device) - t0))
    prof = new_profiler(device)
    prof.start()
    t0 = clock(device)
    for _ in range(profile_steps):
        step()
    wall = clock(device) - t0
    prof.stop()
    kernels, busy = profile_counts(prof, device, wall)
    return {"updates_per_s": max(rates), "kernels_per_update": kernels / profile_steps, "busy_fraction": busy}


def run_rates(args: argparse.Namespace, device: torch.device, deadline: float) -> tuple[list[dict], dict]:
    # By K: a cut budget drops the largest; the smallest K of every task is measured whatever the budget.
    points = [(task, k) for k in args.ks for task in args.tasks]
    n_points = len(points) + len(args.tasks)
    window = min(args.max_window, max(args.min_window, (deadline - time.perf_counter()) / (3.0 * n_points)))
    print(f"\n== rates: {len(points)} points, {window:.2f} s each ==", flush=True)
    print(f"{'task':<15}{'K':>5}{'member-upd/s':>14}{'plain upd/s':>13}{'ratio':>9}{'set-up s':>10}", flush=True)
    plain: dict[str, dict] = {}
    rows: list[dict] = []
    stopped: dict[str, str] = {}  # task -> why its larger Ks are not measured
    last_setup: dict[str, tuple[int, float]] = {}
    for task, k in points:
        row: dict[str, Any] = {"task": task, "K": k}
        rows.append(row)
        if task not in plain:
            try:
                plain[task] = {"status": "ok", **measure_plain(task, device, window, args.profile_steps)}
            except Exception as exc:  # ours is still worth measuring; its ratio is then NaN
                traceback.print_exc()
                nan = float("nan")
                plain[task] = {"status": f"failed: {type(exc).__name__}: {exc}", "updates_per_s": nan,
                               "kernels_per_update": nan, "busy_fraction": nan}
        cfg = point_config(task, k, device, args.report_every, args.quick)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the previous point's blocks, still held by the caching allocator
        need, free = estimated_bytes(cfg, k), free_bytes(device)
        left = deadline - time.perf_counter()
        prev = last_setup.get(task)
        if task in stopped:
            row["status"] = stopped[task]
        elif need is not None and free is not None and need > 0.8 * free:
            row["status"] = f"skipped: memory (estimate {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free)"
        # Set-up grows with K (each member's weights are drawn on the host: Faces' sparse
        # initialization takes about a second per member), so a point whose set-up, scaled from
        # the task's previous point, would take half the time left is not started.
        elif k != min(args.ks) and (left <= 0 or (prev is not None and prev[1] * k / prev[0] > left / 2)):
            row["status"] = "skipped: time budget"
        else:
            try:
                row.update(measure_ours(task, k, device, window, args.report_every, k in args.profile_ks, args.quick))
                row["status"] = "ok"
                if task in GRAPH_TASKS and k in GRAPH_KS:
                    # The same point with the updates run eagerly (on the CPU both runs are eager).
                    eager = measure_ours(task, k, device, window, args.report_every, False, args.quick,
                                         {"cuda_graphs": False})
                    row["eager_member_updates_per_s"] = eager["member_updates_per_s"]
                    row["graphs_speedup"] = row["member_updates_per_s"] / eager["member_updates_per_s"]
                last_setup[task] = (k, row["setup_s"])
            except torch.cuda.OutOfMemoryError:
                row["status"] = stopped[task] = "skipped: out of memory"
                gc.collect()
                torch.cuda.empty_cache()
            except Exception as exc:  # one point's failure (a bug, a diverged run) is not the whole run's
                traceback.print_exc()
                row["status"] = f"failed: {type(exc).__name__}: {exc}"
        base = plain[task]["updates_per_s"]
        if row["status"] == "ok":
            row["plain_updates_per_s"] = base
            row["ratio"] = row["member_updates_per_s"] / base
            print(f"{task:<15}{k:>5}{row['member_updates_per_s']:>14.1f}{base:>13.1f}{row['ratio']:>8.2f}x"
                  f"{row['setup_s']:>10.1f}", flush=True)
        else:
            print(f"{task:<15}{k:>5}  {row['status']}", flush=True)
    return rows, plain


# ----------------------------------------------------------------------------------------------
# 3: the 64-configuration study


def study_config(members: list[dict], args: argparse.Namespace, device: str) -> dict:
    """One train() config for ``members`` (grid points): a solo run for one, a population for more."""
    fields = {key: [m[key] for m in members] for key in ("optimizer", "mu_max", "lr", "seed")}
    if len(members) == 1:
        fields = {key: v[0] for key, v in fields.items()}
    return {
        "task": STUDY_TASK, **fields, "momentum_schedule": "constant", "updates": args.study_updates,
        "report_every": max(1, args.study_updates // 2), "seq_length": args.study_length,
        "eval_cases": 100, "device": device,
    }


def final_errors(cfg: dict) -> list[float]:
    return [m.error for m in train(cfg)]


def one_at_a_time(configs: list[dict], args: argparse.Namespace, device: str, deadline: float) -> dict:
    """Each configuration's own train() call, in order, until ``deadline`` (at least two)."""
    starts, ends, errors = [], [], []
    for i, c in enumerate(configs):
        if i >= 2 and time.perf_counter() >= deadline:
            break
        starts.append(time.perf_counter())
        errors += final_errors(study_config([c], args, device))
        ends.append(clock(torch.device(device)))
    return {"starts": starts, "ends": ends, "errors": errors}


def run_worker(spec: dict) -> None:
    """A child of the 'processes' way: its configurations one at a time until its deadline
    (wall-clock time.time(), shared with the parent); prints one JSON line."""
    args = argparse.Namespace(**spec["args"])
    torch.set_num_threads(spec["threads"])
    torch.zeros(1, device=spec["device"]).sum().item()  # the CUDA context: start-up, as a fresh worker pays it
    ready = time.time()
    done = one_at_a_time(spec["configs"], args, spec["device"], time.perf_counter() + spec["deadline"] - ready)
    per_config = [b - a for a, b in zip(done["starts"], done["ends"])]
    print(json.dumps({"ready": ready, "end": time.time(), "per_config": per_config, "errors": done["errors"]}), flush=True)


def processes(configs: list[dict], args: argparse.Namespace, device: str, n: int, deadline_wall: float) -> dict:
    """``n`` processes on the device at once, configurations dealt out in blocks."""
    each = math.ceil(len(configs) / n)
    blocks = [configs[i * each : (i + 1) * each] for i in range(n)]
    threads = max(1, (os.cpu_count() or 1) // n)
    launch = time.time()
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps({
                "configs": b, "device": device, "deadline": deadline_wall, "threads": threads,
                "args": {"study_updates": args.study_updates, "study_length": args.study_length},
            })],
            stdout=subprocess.PIPE, text=True,
        )
        for b in blocks if b
    ]
    results = []
    errors: dict[int, float] = {}  # configuration index -> final error
    for i, (p, block) in enumerate(zip(procs, blocks)):
        out, _ = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"a worker process failed (exit {p.returncode}); its output: {out[-2000:]}")
        r = json.loads(out.strip().splitlines()[-1])
        r["configs"] = len(block)
        results.append(r)
        errors.update({i * each + j: e for j, e in enumerate(r["errors"])})
    wall = time.time() - launch
    done = sum(len(r["per_config"]) for r in results)
    # Each process's full time had the deadline not cut it: start-up, then its block at the mean
    # time per configuration that it measured.
    est = max(r["ready"] - launch + r["configs"] * sum(r["per_config"]) / len(r["per_config"]) for r in results)
    return {
        "processes": len(procs), "configs_each": each, "measured_configs": done,
        "wall_s": wall if done == len(configs) else est, "measured_wall_s": wall,
        "extrapolated": done < len(configs),
        "startup_s_max": max(r["ready"] - launch for r in results),
        "errors": errors,
    }


def run_study(args: argparse.Namespace, device: torch.device, deadline: float) -> dict:
    configs = addition_grid.configurations()[: args.study_configs]
    dev = device.type
    print(f"\n== the {len(configs)}-configuration study: {STUDY_TASK}, T = {args.study_length}, "
          f"{args.study_updates} updates each ==", flush=True)
    final_errors({**study_config(configs[:1], args, dev), "updates": 2, "report_every": 2})  # warm-up: kernels, handles
    t0 = clock(device)
    fused_errors = final_errors(study_config(configs, args, dev))
    fused = clock(device) - t0
    print(f"fused (one population of {len(configs)}): {fused:.1f} s", flush=True)

    left = deadline - time.perf_counter()
    seq = one_at_a_time(configs, args, dev, time.perf_counter() + 0.45 * left)
    n_seq = len(seq["ends"])
    seq_s = seq["ends"][-1] - seq["starts"][0]
    seq_wall = seq_s * len(configs) / n_seq
    how = "" if n_seq == len(configs) else f" (extrapolated from {n_seq} configurations)"
    print(f"one configuration at a time: {seq_wall:.1f} s{how}, {seq_wall / fused:.1f}x the fused time", flush=True)

    left = deadline - time.perf_counter()
    procs = processes(configs, args, dev, args.study_processes, time.time() + max(1.0, left - 1.0))
    how = "" if not procs["extrapolated"] else f" (extrapolated from {procs['measured_configs']} configurations)"
    print(f"{procs['processes']} processes sharing the {dev}, {procs['configs_each']} configurations each: "
          f"{procs['wall_s']:.1f} s{how}, {procs['wall_s'] / fused:.1f}x the fused time "
          f"(start-up up to {procs['startup_s_max']:.1f} s)", flush=True)

    # Fused members reproduce solo runs: the same final errors (exactly in float64; float32 differs
    # in the last digits where the batched kernels sum in another order).
    alone = {**procs["errors"], **dict(enumerate(seq["errors"]))}
    diff = max(abs(fused_errors[i] - e) for i, e in alone.items())
    return {
        "task": STUDY_TASK, "configurations": len(configs), "updates": args.study_updates,
        "seq_length": args.study_length,
        "fused": {"wall_s": fused},
        "one_at_a_time": {"wall_s": seq_wall, "measured_configs": n_seq, "measured_wall_s": seq_s,
                          "extrapolated": n_seq < len(configs)},
        "processes": {k: v for k, v in procs.items() if k != "errors"},
        "ratios": {"one_at_a_time_over_fused": seq_wall / fused, "processes_over_fused": procs["wall_s"] / fused},
        "max_final_error_difference": diff,
    }


# ----------------------------------------------------------------------------------------------
# 4: float64 gaps


def final_params(cfg: dict) -> list[torch.Tensor]:
    out: dict[str, Any] = {}

    def reporter(report) -> None:
        if report.final:
            out["params"] = report.checkpoint()["params"]

    train(cfg, reporter)
    return out["params"]


def relative_gap(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max over tensors of max|a - b| / max|b|."""
    return max(float((x - y).abs().max() / y.abs().max().clamp(min=1e-300)) for x, y in zip(a, b))


def gap_config(task: str, device: str, updates: int, quick: bool, member: int | None = None) -> dict:
    """The float64 population of GAP_MEMBERS (lr x1, x1/2, x2; seeds 0, 1, 2), or its ``member``'s solo run."""
    cfg = point_config(task, GAP_MEMBERS, torch.device(device), updates, quick)
    base = cfg["lr"][0]
    lrs = [base, base / 2, base * 2][:GAP_MEMBERS]
    cfg.update(updates=updates, report_every=updates, dtype="float64", lr=lrs, seed=list(range(GAP_MEMBERS)),
               device=device)
    if task in AUTOENCODERS:
        cfg.update(train_cases=min(cfg.get("train_cases") or 1000, 1000))
    if member is not None:
        cfg.update(lr=lrs[member], seed=member)
    return cfg


def run_gaps(args: argparse.Namespace, device: torch.device, deadline: float) -> list[dict]:
    print(f"\n== float64 gaps after {args.gap_updates} updates (max relative weight difference) ==", flush=True)
    rows = []
    for task in sorted(args.tasks, key=GAP_ORDER.index):
        if rows and time.perf_counter() >= deadline:  # the first task whatever the budget
            rows.append({"task": task, "status": "skipped: time budget"})
            print(f"{task:<15} skipped: time budget", flush=True)
            continue
        pop = final_params(gap_config(task, device.type, args.gap_updates, args.quick))
        solo = [final_params(gap_config(task, device.type, args.gap_updates, args.quick, k)) for k in range(GAP_MEMBERS)]
        member_vs_solo = max(relative_gap([p[k : k + 1] for p in pop], solo[k]) for k in range(GAP_MEMBERS))
        # On the CPU there is no second device: the CPU run is compared with itself, run again.
        cpu = final_params(gap_config(task, "cpu", args.gap_updates, args.quick, 0))
        cpu_vs_device = relative_gap(cpu, solo[0])
        rows.append({"task": task, "status": "ok", "updates": args.gap_updates, "members": GAP_MEMBERS,
                     "member_vs_solo": member_vs_solo, "cpu_vs_device": cpu_vs_device,
                     "devices": f"cpu vs {device.type}"})
        print(f"{task:<15} member vs solo {member_vs_solo:.2e}   cpu vs {device.type} {cpu_vs_device:.2e}", flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# output


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"### GPU benchmark, {meta['date']}: {meta['device_name']} (torch {meta['torch']})",
        "",
        f"`{meta['command']}`, {meta['elapsed_s']:.0f} s in all (time budget {meta['time_budget_s']:.0f} s).",
        *([f"**Sections that failed:** {'; '.join(meta['failures'])}", ""] if meta.get("failures") else []),
        "| task | K | member-updates/s | plain loop updates/s | ratio | kernels/update | busy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rates"]:
        if r["status"] != "ok":
            lines.append(f"| {r['task']} | {r['K']} | {r['status']} | | | | |")
            continue
        p = r.get("profile")
        kern = f"{p['kernels_per_update']:.0f}" if p else ""
        busy = f"{100 * p['busy_fraction']:.0f}%" if p else ""
        lines.append(f"| {r['task']} | {r['K']} | {r['member_updates_per_s']:,.0f} | {r['plain_updates_per_s']:,.1f} "
                     f"| {r['ratio']:.2f}x | {kern} | {busy} |")
    graphed = [r for r in result["rates"] if r["status"] == "ok" and "graphs_speedup" in r]
    if graphed:
        note = "" if meta["device"] == "cuda" else " (on the CPU graphs are not used: both runs are eager)"
        lines += ["", f"CUDA graphs on and off{note}:", "",
                  "| task | K | updates/s, graphs | updates/s, eager | graphs / eager |", "| --- | ---: | ---: | ---: | ---: |"]
        for r in graphed:
            lines.append(f"| {r['task']} | {r['K']} | {r['member_updates_per_s'] / r['K']:,.1f} "
                         f"| {r['eager_member_updates_per_s'] / r['K']:,.1f} | {r['graphs_speedup']:.2f}x |")
    lines += ["", "The plain loop (one configuration):", "", "| task | updates/s | kernels/update | busy |",
              "| --- | ---: | ---: | ---: |"]
    for task, p in result["plain"].items():
        lines.append(f"| {task} | {p['updates_per_s']:,.1f} | {p['kernels_per_update']:.0f} | {100 * p['busy_fraction']:.0f}% |")
    s = result.get("study")
    if s:
        seq, pr = s["one_at_a_time"], s["processes"]
        ext = lambda d: f" (extrapolated from {d['measured_configs']})" if d["extrapolated"] else ""  # noqa: E731
        lines += [
            "", f"The {s['configurations']}-configuration study ({s['task']}, T = {s['seq_length']}, "
            f"{s['updates']} updates each):", "",
            "| way | wall time | wall time / fused |", "| --- | ---: | ---: |",
            f"| one fused population of {s['configurations']} | {s['fused']['wall_s']:.1f} s | 1 |",
            f"| one configuration at a time | {seq['wall_s']:.1f} s{ext(seq)} | {s['ratios']['one_at_a_time_over_fused']:.1f}x |",
            f"| {pr['processes']} processes sharing the device, {pr['configs_each']} configurations each "
            f"| {pr['wall_s']:.1f} s{ext(pr)} | {s['ratios']['processes_over_fused']:.1f}x |",
            "", f"Largest difference of a configuration's final error, fused against alone: "
            f"{s['max_final_error_difference']:.2g}.",
        ]
    lines += ["", "float64 gaps (largest relative weight difference):", "",
              "| task | updates | member vs solo | CPU vs device |", "| --- | ---: | ---: | ---: |"]
    for g in result["gaps"]:
        if g["status"] == "ok":
            lines.append(f"| {g['task']} | {g['updates']} | {g['member_vs_solo']:.1e} | {g['cpu_vs_device']:.1e} ({g['devices']}) |")
        else:
            lines.append(f"| {g['task']} | | {g['status']} | |")
    return "\n".join(lines) + "\n"


def _guarded(section: Callable[[], Any], empty: Any) -> Any:
    try:
        return section()
    except Exception as exc:
        traceback.print_exc()
        print(f"this section failed: {type(exc).__name__}: {exc}", flush=True)
        FAILURES.append(f"{type(exc).__name__}: {exc}")
        return empty


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--quick", action="store_true",
                    help="tiny sizes (curves and addition, K = 1 and 2, 4 study configurations): a smoke test")
    ap.add_argument("--time-budget", type=float, default=None,
                    help="seconds for the whole run, shared by the sections (default 300; --quick 20); the smallest K "
                         "of every task, the study's fused and first two solo runs and the first task's gaps run "
                         "whatever it says")
    ap.add_argument("--tasks", nargs="+", choices=ALL_TASKS, default=None)
    ap.add_argument("--ks", nargs="+", type=int, default=None, help="population sizes (default 1 16 64 256 1024)")
    ap.add_argument("--profile-ks", nargs="+", type=int, default=None, help="Ks profiled (default 1 256)")
    ap.add_argument("--study-configs", type=int, default=None, help="configurations of the study (default 64)")
    ap.add_argument("--study-updates", type=int, default=None, help="updates per configuration (default 200)")
    ap.add_argument("--study-length", type=int, default=None, help="T of the study's sequences (default 80)")
    ap.add_argument("--study-processes", type=int, default=None, help="processes sharing the device (default 8)")
    ap.add_argument("--gap-updates", type=int, default=None, help="updates before the float64 gaps (default 40)")
    ap.add_argument("--skip", nargs="+", choices=["rates", "study", "gaps"], default=[],
                    help="sections not to run (their JSON entries are then empty)")
    ap.add_argument("--out", type=Path, default=Path("."), help="folder for gpu_benchmark.json and .md")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(json.loads(args.worker))
        return
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is visible to this torch build (use --device cpu)")
    q = args.quick
    defaults = {
        "time_budget": 20.0 if q else 300.0, "tasks": ["curves", "addition"] if q else list(ALL_TASKS),
        "ks": [1, 2] if q else [1, 16, 64, 256, 1024], "profile_ks": [1, 2] if q else [1, 256],
        "study_configs": 4 if q else 64, "study_updates": 4 if q else 200, "study_length": 20 if q else 80,
        "study_processes": 2 if q else 8, "gap_updates": 3 if q else 40,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.report_every = 2 if q else 10
    args.profile_steps = 3 if q else 10
    args.min_window, args.max_window = (0.2, 1.0) if q else (1.0, 5.0)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"torch {torch.__version__}, {name}, time budget {args.time_budget:.0f} s", flush=True)

    budget = Budget(args.time_budget)
    result: dict[str, Any] = {"meta": {}, "rates": [], "plain": {}, "study": None, "gaps": []}
    # A section that fails leaves its error in the JSON and the others run: a GPU's time is scarce.
    if "rates" not in args.skip:
        result["rates"], result["plain"] = _guarded(lambda: run_rates(args, device, budget.section("rates")), ([], {}))
    if "study" not in args.skip:
        result["study"] = _guarded(lambda: run_study(args, device, budget.section("study")), None)
    if "gaps" not in args.skip:
        result["gaps"] = _guarded(lambda: run_gaps(args, device, budget.section("gaps")), [])
    result["meta"] = {
        "date": datetime.date.today().isoformat(), "torch": torch.__version__, "device": args.device,
        "device_name": name, "cuda": torch.version.cuda, "host": platform.node(),
        "threads": torch.get_num_threads(), "quick": q, "failures": FAILURES, "time_budget_s": args.time_budget,
        "elapsed_s": time.perf_counter() - budget.start,
        "command": "python benchmarks/gpu_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_benchmark.json").write_text(json.dumps(result, indent=1))
    md = markdown(result)
    (args.out / "gpu_benchmark.md").write_text(md)
    print("\n" + md)
    print(f"wrote {args.out / 'gpu_benchmark.json'} and {args.out / 'gpu_benchmark.md'} "
          f"({result['meta']['elapsed_s']:.0f} s)", flush=True)
    if FAILURES:
        sys.exit(f"gpu_benchmark: {len(FAILURES)} section(s) failed: {'; '.join(FAILURES)}")


if __name__ == "__main__":
    main()
