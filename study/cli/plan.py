"""`study plan SPEC`: what a study will do, printed before anything is written or started.

The populations are study/plan/sizing.py's ``make_plan``, the function `study run` sizes its populations
with: once for this machine (what `study run` would do here), and the expected wall time both on
the CPU and on a GPU (this machine's, or the one `--gpus`/`--gpu-memory` describe; by default
one of the GPU the rates were measured on).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from typing import Any

import pandas as pd
from rich.console import Console

from study.cli.output import table

from study.plan import sizing as plans
from study.plan import rates
from study.errors import SpecError
from study.spec.model import ResourcesSpec, StudySpec, load_spec
from study.spec.expand import sgd_note


def plans_for(spec: StudySpec, here: plans.Machine, gpus: int | None = None, gpu_memory: float | None = None) -> dict[str, Any]:
    """The plan `study run` makes on ``here``, and the CPU and GPU estimates (a plan, or the
    reason that device cannot take the study)."""
    run = plans.make_plan(spec, here)  # a SpecError here is the one `study run` would give
    n = gpus or int(here.gpus) or 1
    gpu_machine = plans.Machine(
        f"{n} x {here.gpu_name or rates.GPU_NAME}" + ("" if here.gpus else " (not on this machine)"),
        max(here.cpus, n * float(spec.resources.cpus)), float(n), here.memory,
        int(gpu_memory * 1e9) if gpu_memory else here.gpu_memory or rates.GPU_MEMORY,
        here.gpu_name or rates.GPU_NAME,
    )
    cpu_spec = spec.model_copy(update={"resources": ResourcesSpec(cpus=spec.resources.cpus, gpus=0)})
    gpu_spec = spec if spec.resources.gpus not in (0, 0.0) else spec.model_copy(
        update={"resources": ResourcesSpec(cpus=spec.resources.cpus, gpus="auto")})
    out: dict[str, Any] = {"run": run}
    for device, s, machine in (("cpu", cpu_spec, replace(here, gpus=0.0)), ("gpu", gpu_spec, gpu_machine)):
        try:
            out[device] = plans.make_plan(s, machine)
        except SpecError as exc:
            out[device] = str(exc)
    return out


def command(args: argparse.Namespace, out: Console, err: Console) -> int:
    spec = load_spec(args.spec)
    found = plans_for(spec, plans.this_machine(), args.gpus, args.gpu_memory)
    if args.format == "json":
        out.print_json(json.dumps(to_json(spec, found)))
        return 0
    run = found["run"]
    out.print(
        f"study {spec.name}: {spec.trials} configurations x {spec.repeats} repeats = {spec.trials * spec.repeats} "
        f"members; `study run` here trains on {'a GPU' if run.device == 'gpu' else 'the CPU'} ({run.where}), "
        f"{run.slots} trial(s) at once, memory limit per trial {plans.size_text(run.limit)} ({run.limit_what})",
        highlight=False,  # wrapped at the terminal's width, at spaces
    )
    note = sgd_note(spec)
    if note:
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    for warning in run.warnings:
        out.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    # Tables that fit the terminal by shortening values, never words (study/cli/output.py).
    rows = pd.DataFrame(
        [(r.shape or "(one shape)", r.count, r.configs, r.members, plans.size_text(r.memory).split(" (")[0],
          duration(r.seconds)) for r in run.rows],
        columns=["shape", "populations", "configurations", "members", "memory", "training_time"])
    title = f"populations ({run.device}), each with its configurations, members, memory and training time" + (
        "" if run.exact else "; sampled shapes may split them further")
    out.print(table(rows, title, out.width))
    times = []
    for device in ("cpu", "gpu"):
        p = found[device]
        if isinstance(p, str):
            times.append((device, "does not fit", None, None, None, p))
        else:
            times.append((device, p.where, p.slots, p.populations, max(r.members for r in p.rows),
                          duration(p.wall_seconds)))
    times_df = pd.DataFrame(times, columns=["device", "where", "at_once", "populations", "largest", "wall_time"])
    out.print(table(times_df, "expected wall time (training only, from measured rates: study/plan/rates.py), with "
                    "the trials at once and the members of the largest population", out.width))
    return 0


def to_json(spec: StudySpec, found: dict[str, Any]) -> dict[str, Any]:
    def one(p: Any) -> Any:
        if isinstance(p, str):
            return {"error": p}
        return {
            "device": p.device, "where": p.where, "cpus_per_trial": p.cpus_per_trial, "gpus_per_trial": p.gpus_per_trial,
            "trials_at_once": p.slots, "configurations_per_population": p.configs_per_trial,
            "memory_limit_bytes": p.limit, "memory_limit": p.limit_what, "exact": p.exact,
            "populations": [{"shape": r.shape, "count": r.count, "configurations": r.configs, "members": r.members,
                             "memory_bytes": r.memory, "training_seconds": round(r.seconds, 1)} for r in p.rows],
            "populations_total": p.populations, "wall_seconds": round(p.wall_seconds, 1),
            "warnings": p.warnings,
        }

    return {"name": spec.name, "configurations": spec.trials, "sgd_once": sgd_note(spec), "repeats": spec.repeats,
            "members": spec.trials * spec.repeats, "run": one(found["run"]),
            "estimates": {"cpu": one(found["cpu"]), "gpu": one(found["gpu"])},
            "rates": {"cpu": rates.CPU_SOURCE, "gpu": rates.GPU_SOURCE}}


def duration(seconds: float) -> str:
    """'4 min', '3.2 h', '12 days', '9 weeks'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 14 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / 604800:.1f} weeks"
