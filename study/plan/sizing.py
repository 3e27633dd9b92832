"""What a study will do, known before it does anything: its populations, their device and memory,
and the wall time to expect.

`study run` sizes its populations with ``make_plan`` (for the machine or Ray cluster it runs on),
and `study plan` prints the same ``make_plan`` for this machine and for a GPU, so the plan shown
is the plan run. ``make_plan`` also refuses, naming the fields, a study whose configuration cannot
fit the memory of the device its trials get: the memory figures are the tasks' own estimates
(trainables/tasks/memory.py), and nothing here knows one task from another.
"""

from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any

from study.plan import pacing, population
from study.plan import rates, resolution
from study.plan.devices import trial_gpus
from study.errors import SpecError
from study.spec.expand import param_name, sgd_duplicates
from study.spec.model import StudySpec
from trainables.config import POPULATION_FIELDS, TaskConfig
from trainables.tasks import family
from trainables.tasks.memory import MemoryEstimate, estimate

# The share of a trial's device memory its population may fill: the rest is the CUDA context,
# the allocator's slack, and on the CPU the driver, Ray and the other processes.
MEMORY_FRACTION = 0.8
# A GPU whose memory the driver cannot read (a cluster whose nodes have no nvidia-smi, or GPUs
# declared to Ray without CUDA): sized as the smallest common data-centre GPU.
ASSUMED_GPU_MEMORY = 16 << 30
# Shape combinations enumerated at most; beyond, each field's edges with the others at their first.
MAX_SHAPES = 4096


@dataclass(frozen=True)
class Machine:
    """Where a study's trials run, as far as sizing goes."""

    where: str  # "this machine", "the cluster", "1 GPU of 141 GB (assumed)"
    cpus: float  # CPUs trials can use, in all
    gpus: float  # GPUs, in all
    memory: int  # host memory a trial may use, bytes (available now; the smallest node's on a cluster)
    gpu_memory: int | None = None  # the smallest GPU's memory, bytes; None: not known
    gpu_name: str | None = None


def this_machine() -> Machine:
    """This machine as a local Ray sees it: its CPU count, its CUDA devices, its available memory."""
    import psutil
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu_memory = min((torch.cuda.get_device_properties(i).total_memory for i in range(gpus)), default=None)
    name = torch.cuda.get_device_name(0) if gpus else None
    return Machine("this machine", float(os.cpu_count() or 1), float(gpus), int(psutil.virtual_memory().available),
                   gpu_memory, name)


def ray_machine(local: bool) -> Machine:
    """The Ray this driver is connected to: its CPUs and GPUs (``ray.cluster_resources()``); host
    memory from this machine when Ray is local, else the smallest live node's; GPU memory read on
    the GPU nodes (``nvidia-smi``), the smallest one."""
    import ray

    have = ray.cluster_resources()
    cpus, gpus = float(have.get("CPU", 0)), float(have.get("GPU", 0))
    if local:
        here = this_machine()
        return Machine("this machine", cpus, gpus, here.memory, here.gpu_memory if gpus else None, here.gpu_name)
    nodes = [n for n in ray.nodes() if n.get("Alive", True)]
    memory = min((int(n["Resources"].get("memory", 0)) for n in nodes if n["Resources"].get("CPU")), default=0)
    gpu_memory, name = _probe_gpu_memory(nodes) if gpus else (None, None)
    return Machine("the cluster", cpus, gpus, memory, gpu_memory, name)


def _probe_gpu_memory(nodes: list[dict[str, Any]]) -> tuple[int | None, str | None]:
    """The smallest GPU memory over the GPU nodes, read by a task on each that takes no resource
    (so it runs beside busy trials, and creates no CUDA context: nvidia-smi reads the driver)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def read() -> list[tuple[int, str]]:
        import subprocess

        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total,name", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10, check=True).stdout
        except (OSError, subprocess.SubprocessError):
            return []
        rows = [line.split(",", 1) for line in out.strip().splitlines() if "," in line]
        return [(int(float(mib)) << 20, gpu.strip()) for mib, gpu in rows]

    refs = [read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
            for n in nodes if n["Resources"].get("GPU")]
    try:
        found = [g for got in ray.get(refs, timeout=30) for g in got]
    except Exception:  # GetTimeoutError, a node gone: size as a GPU of unknown memory
        return None, None
    if not found:
        return None, None
    return min(found)


@dataclass(frozen=True)
class Shape:
    """Configurations that train together: one training config shape and how many of them."""

    label: str  # the searched values that set the shape ("task=mem5"), "" when there is one shape
    cfg: TaskConfig  # a configuration's training config (its repeats as members)
    configs: int  # configurations of this shape (an estimate when a sampler picks the shapes)
    estimate: MemoryEstimate


def shapes(spec: StudySpec) -> list[Shape]:
    """The study's shapes. A grid's are exact (its points grouped by study/plan/population.py's
    shape_key); with another sampler every shape it can pick is listed (categorical values,
    int and float edges), and the configurations are given to the first one."""
    fixed = {}  # the population fields at their first values: they do not change the shape
    varying = []
    for f, p in spec.search.items():
        values = list(p.values_to_check())
        if f in POPULATION_FIELDS and f != "optimizer":
            fixed[param_name(f, p)] = values[0]
        else:
            varying.append((f, param_name(f, p), values))
    grid = spec.sampler.type == "grid"
    count = math.prod(len(v) for _, _, v in varying)
    if grid or count <= MAX_SHAPES:  # a grid's count is bounded by its size (study/spec/model.py)
        combos = [dict(zip((n for _, n, _ in varying), c)) for c in itertools.product(*(v for _, _, v in varying))]
    else:
        base = {n: v[0] for _, n, v in varying}
        combos = [base] + [{**base, n: x} for _, n, v in varying for x in v[1:]]
    # Every combination holds as many of the full grid's points; those left out as another's runs
    # (plain SGD under CM and NAG, expand.sgd_duplicates) are taken off their own shape below.
    per_combo = spec.grid_size() // max(1, len(combos)) if grid else 0
    # The fields named in a shape's label: those whose values alone change the shape (not cm/nag).
    base = {**fixed, **combos[0]}
    splitting = [(f, n) for f, n, v in varying
                 if len({population.shape_key(spec, {**base, n: x}) for x in v}) > 1]
    found: dict[str, list] = {}
    for combo in combos:
        params = {**fixed, **combo}
        key = population.shape_key(spec, params)
        if key not in found:
            label = ", ".join(f"{f}={combo[n]}" for f, n in splitting)
            found[key] = [label, population.solo_config(spec, params), 0]
        found[key][2] += per_combo
    for point in sgd_duplicates(spec) if grid else []:
        found[population.shape_key(spec, {param_name(f, spec.search[f]): v for f, v in point.items()})][2] -= 1
    out = [Shape(label, cfg, n, estimate(cfg)) for label, cfg, n in found.values() if n > 0 or not grid]
    if not grid:
        out[0] = Shape(out[0].label, out[0].cfg, spec.trials, out[0].estimate)
    return out


@dataclass
class PopulationRow:
    shape: str
    count: int  # populations like this one
    configs: int  # configurations in each
    members: int  # members in each (configurations x repeats)
    memory: int  # bytes each, by the task's estimate
    seconds: float  # expected training time of each, from study/plan/rates.py


@dataclass
class Plan:
    device: str  # "cpu" or "gpu"
    where: str
    cpus_per_trial: float
    gpus_per_trial: float
    slots: int  # trials at once
    configs_per_trial: int
    limit: int  # bytes one trial's population may use
    limit_what: str
    rows: list[PopulationRow] = field(default_factory=list)
    exact: bool = True  # False: a sampler picks the shapes, so the split by shape is a guess
    parallel: float = 1.0  # trials that train at full speed at once
    warnings: list[str] = field(default_factory=list)  # what leaves a learning sampler blind
    # Every population in the order the searcher hands it out, with when it trains (pacing.schedule).
    schedule: list[pacing.Handed] = field(default_factory=list)

    @property
    def populations(self) -> int:
        return sum(r.count for r in self.rows)

    @property
    def wall_seconds(self) -> float:
        """When the last population ends in the schedule: the trials at once share the machine
        (``parallel`` at full speed), and a learning sampler's populations wait for the results
        its pacing needs (study/plan/pacing.py)."""
        return max((h.end for h in self.schedule), default=0.0)


def trial_resources(spec: StudySpec, cluster_gpus: float) -> dict[str, float]:
    """What each Ray trial asks for: ``resources.cpus`` and the GPUs ``resources.gpus`` resolves to."""
    return {"cpu": float(spec.resources.cpus), "gpu": trial_gpus(spec.resources.gpus, cluster_gpus)}


def make_plan(spec: StudySpec, machine: Machine) -> Plan:
    """The populations `study run` trains on ``machine``; a SpecError when one configuration
    (its ``repeats`` members) cannot fit the memory a trial gets there.

    The rule (docs/study-specs.md, "Fused studies"): a trial trains at most ``max_members``
    members; by default, on the CPU at most 16 and what fits 2 GiB, on a GPU what fits
    MEMORY_FRACTION of the trial's share of the smallest GPU (up to 4,096). Within that, the
    configurations are spread over the trials that can run at once."""
    res = trial_resources(spec, machine.gpus)
    device = "gpu" if res["gpu"] > 0 else "cpu"
    asked = str(spec.config.get("device") or "")
    if asked.startswith("cuda") and device == "cpu":
        raise SpecError(
            f"config.device={asked!r} is not allowed here: resources.gpus={spec.resources.gpus!r} gives the trials no GPU "
            f"on {machine.where} (it has none); use device 'auto' or 'cpu', or run on a Ray cluster with GPUs"
        )
    # Trials at once: what the resources hold, and no more than max_concurrent_trials.
    slots = min(spec.max_concurrent_trials or math.inf, _slots(machine, res))
    if device == "gpu":
        gpu_memory = machine.gpu_memory or ASSUMED_GPU_MEMORY
        limit = int(MEMORY_FRACTION * gpu_memory * min(1.0, res["gpu"]))
        shown = "the GPU's" if machine.gpu_memory else "an assumed 16 GiB GPU's"
        limit_what = f"{MEMORY_FRACTION:.0%} of {shown} {size_text(gpu_memory)}" + (
            f" x resources.gpus={res['gpu']:g}" if res["gpu"] < 1 else "")
        parallel = float(slots)
    else:
        limit = int(MEMORY_FRACTION * machine.memory)
        limit_what = f"{MEMORY_FRACTION:.0%} of the {size_text(machine.memory)} of memory available on {machine.where}"
        parallel = max(1.0, min(slots, machine.cpus / 2))  # the CPU rates are of a trial on 2 cores
    found = shapes(spec)
    for s in found:
        check_fits(spec, s, limit, limit_what)
    heaviest = max(found, key=lambda s: s.estimate.total(spec.repeats))
    budget = limit if device == "gpu" else limit // max(1, slots)
    per_trial = population.configs_per_trial(spec, heaviest.cfg, slots, device=device, budget=budget,
                                             memory=heaviest.estimate)
    plan = Plan(device, machine.where, res["cpu"], res["gpu"], max(1, slots), per_trial, limit, limit_what,
                exact=spec.sampler.type == "grid" or len(found) == 1, parallel=parallel)
    # A sampler that learns from results takes its suggestions in rounds (study/plan/pacing.py).
    from study.run.optuna_study import study_pacing

    pace = study_pacing(spec, per_trial, slots=plan.slots)
    plan.warnings = pacing.blind_warnings(pace, spec.trials, _startup_field(spec)) + resolution.spec_warnings(spec)
    # The populations as the searcher hands them out, by the pacing's own rule, and when each trains.
    handed = pacing.schedule(pace, [s.configs for s in found], per_trial, plan.slots, parallel,
                             lambda i, n: _seconds(found[i].cfg, n * spec.repeats, device))
    plan.schedule = handed
    for (i, configs), run in itertools.groupby(handed, key=lambda h: (h.shape, h.configs)):
        s, members = found[i], configs * spec.repeats
        plan.rows.append(PopulationRow(s.label, len(list(run)), configs, members, s.estimate.total(members),
                                       _seconds(s.cfg, members, device)))
    return plan


def _startup_field(spec: StudySpec) -> str:
    return "sampler.options.popsize" if spec.sampler.type == "cmaes" else "sampler.options.n_startup_trials"


def _slots(machine: Machine, res: dict[str, float]) -> int:
    slots = int(machine.cpus // res["cpu"])
    if res["gpu"]:
        slots = min(slots, int(machine.gpus // res["gpu"]))
    return max(1, slots)


def _seconds(cfg: TaskConfig, members: int, device: str) -> float:
    rate = rates.member_updates_per_s(cfg.task, family(cfg.task), members, device, cfg.batch_size, cfg.seq_length)
    return members * cfg.updates / rate


def check_fits(spec: StudySpec, shape: Shape, limit: int, limit_what: str) -> None:
    """Refuses a configuration whose ``repeats`` members (and the data they share) need more than
    ``limit`` bytes, naming what weighs most, its fields and values, the size and the limit."""
    est = shape.estimate
    need = est.total(spec.repeats)
    if need <= limit:
        return
    part = est.largest()
    fields = [f for f in part.fields if f not in ("task", "optimizer", "dtype")] or list(part.fields)
    given = [f for f in fields if getattr(shape.cfg, f) is not None]
    at_default = [f for f in fields if f not in given]
    values = ", ".join(f"{f}={getattr(shape.cfg, f)!r}" for f in given) or ", ".join(fields)
    if given and at_default:
        values += f" (with {', '.join(at_default)} at the task's default)"
    one = est.total(1)
    members = (
        f"one member alone needs {size_text(one)}; lower {' or '.join(fields)}"
        if one > limit
        else f"{spec.repeats} members (repeats={spec.repeats}) need it, one alone {size_text(one)}; lower repeats "
             f"or {' or '.join(fields)}"
    )
    where = f" ({shape.label})" if shape.label else ""
    raise SpecError(
        f"{values} is not allowed{where}: a configuration of task {shape.cfg.task!r} needs {bytes_text(need)} "
        f"by the task's estimate ({part.what}: {size_text(part.bytes)}{' per member' if part in est.per_member else ''}), "
        f"more than the limit of {bytes_text(limit)} ({limit_what}); {members}"
    )


def size_text(n: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def bytes_text(n: float) -> str:
    return f"{size_text(n)} ({int(n):,} bytes)" if n >= 1e3 else size_text(n)
