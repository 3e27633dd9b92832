"""`study best NAME`: a spec that reruns a study's best configuration with new seeds (and,
optionally, for longer), so that a search ends in a run whose figure can be quoted.

"Best" is the verdict's (study/report/verdict.py): among the configurations that trained to their
end, the one with the lowest final error, the mean over its seeds of the study metric at its last
report; a configuration with a diverged seed ranks last and is never rerun as the best. The
winner of a search is the configuration whose seeds happened to do well, so its own figure is
biased low: the rerun trains it on seeds the study never used, and its mean is the figure to quote.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from study import api
from study.errors import LocationError, SpecError, StudyError
from study.record import queries
from study.spec.model import load_spec

# Ten seeds: the mean's standard error is about a third of one seed's spread, and a t interval
# on 9 degrees of freedom (t = 2.26 at 95 %) is not much wider than the normal one; the seeds
# train as one fused population, so on a GPU ten cost little more wall time than one.
DEFAULT_REPEATS = 10
SUFFIX = "_best"
# The spec fields a rerun keeps from its study (the rest is fixed here or left to the defaults:
# one configuration needs no sampler, scheduler, num_samples or max_concurrent_trials).
_KEPT = ("task", "fuse", "resources", "metric", "mode", "retries", "checkpoint_every")


def command(args: argparse.Namespace, out: Console, err: Console) -> int:
    from study.report.verdict import study_verdict  # scipy and the task's data code: only here

    target = api.results_target(args.name, args.dir, args.results_db)
    study = queries.study_row(target, args.name)
    if study is None:
        raise LocationError(f"no study named {args.name!r} in its results database; `study status` lists the studies")
    path = Path(args.output) if args.output else Path.cwd() / f"{_rerun_name(args.name)}.yaml"
    if path.is_dir() or not path.parent.is_dir():
        raise LocationError(f"-o {str(path)!r} is not allowed: need a file path in a directory that exists")
    if path.exists() and not args.force:
        raise LocationError(f"{str(path)!r} exists: `study best` does not overwrite a file without --force; "
                            "give another path with -o")
    verdict = study_verdict(args.name, args.dir, args.results_db)
    if verdict is None or verdict.best.diverged:
        what = "every finished configuration diverged" if verdict is not None else \
            "no configuration has finished (completed) yet"
        raise StudyError(f"study {args.name!r} has no configuration to rerun: {what} "
                         f"({int(study['finished'])} of {int(study['num_samples'])} ended; pruned and failed "
                         "ones have no final error); `study status " + args.name + "` shows them")
    trials = api.trials(args.name, args.dir, args.results_db)
    spec, header = rerun_spec(study, verdict, trials, args.repeats or DEFAULT_REPEATS, args.updates, path)
    text = header + yaml.safe_dump(spec, sort_keys=False)
    try:
        load_spec(text)  # the project's own checks, before anything is written
    except SpecError as exc:
        raise SpecError(f"the rerun spec of study {args.name!r} would not be valid: {exc}") from None
    path.write_text(text)
    config = spec["config"]
    first = config["seed"]
    out.print(f"wrote {path}: study {spec['name']} reruns configuration {verdict.best.trial_id} "
              f"({verdict.best.name()}) with seeds {first}..{first + spec['repeats'] - 1}, {config['updates']} updates",
              highlight=False, soft_wrap=True)
    out.print(f"next: study plan {path} | study run {path}", highlight=False, soft_wrap=True)
    return 0


def rerun_spec(study: dict[str, Any], verdict: Any, trials: Any, repeats: int, updates: int | None,
               path: Path) -> tuple[dict[str, Any], str]:
    """The rerun's spec (a mapping for the YAML file) and its comment header."""
    source = yaml.safe_load(study["spec_yaml"]) or {}
    best = verdict.best
    row = trials[trials["trial_id"] == best.trial_id].iloc[0]
    used = sorted({s for c in trials["config"] if isinstance(c, dict) for s in _seeds(c.get("seed"))})
    first_seed = (used[-1] + 1) if used else 0
    config = dict(source.get("config") or {})
    old_updates = (row["config"] or {}).get("updates", config.get("updates"))
    config["seed"] = first_seed
    if updates is not None:
        config["updates"] = updates
    elif old_updates is not None:
        config["updates"] = old_updates
    # The spec validation wants a search: each best value as a categorical of one value fixes it
    # and keeps it a searched field, so the rerun's tables, verdict and MLflow runs name it.
    fixed = {k: v for k, v in best.values.items() if k != "seed"}
    if not fixed:
        raise StudyError(f"study {study['name']!r} searched only the seed: there is no configuration to fix")
    for key in fixed:
        config.pop(key, None)
    task = fixed.get("task", source.get("task"))
    name = _rerun_name(str(study["name"]))
    longer = "" if updates is None or updates == old_updates else f", for {updates} updates instead of {old_updates}"
    spec: dict[str, Any] = {
        "name": name,
        "description": (f"The best configuration of study {study['name']} ({best.trial_id}: {best.name()}), "
                        f"rerun with {repeats} new seeds{longer}"),
        "task": task,
        "config": config,
        "search": {k: {"type": "categorical", "values": [v]} for k, v in fixed.items()},
        "sampler": {"type": "grid"},
        "repeats": repeats,
        **{k: source[k] for k in _KEPT if k in source and k != "task"},
    }
    target = source.get("target")
    if isinstance(target, dict):  # a per-task target: the rerun runs one task
        target = target.get(task)
    if target is not None:  # time to target (docs/study-specs.md) measured again on the new seeds
        spec["target"] = target
    if source.get("max_members") and source["max_members"] >= repeats:
        spec["max_members"] = source["max_members"]
    seeds = ", ".join("diverged" if e is None else f"{e:.4g}" for _, e in best.seed_errors)
    level = f"; bias-only {best.bias_only:.4g}" if best.bias_only is not None else ""
    used_text = f"{used[0]}..{used[-1]}" if used else "none recorded"
    header = "\n".join([
        f"# Written by `study best {study['name']}` on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC.",
        f"# Source study: {study['name']} (task {study['task']}, {study['state']}, {int(study['finished'])} of "
        f"{int(study['num_samples'])} configurations ended).",
        f"# Best configuration: {best.trial_id} (Optuna trial {_number(row['optuna_trial_number'])}): {best.name()}",
        f"# Its {verdict.metric}: {best.error:.6g}, the mean over its {_seeds_text(len(best.seed_errors))} at its "
        f"last report ({seeds}){level}.",
        "# Best: the lowest such final error among the study's finished configurations.",
        f"# This rerun: {repeats} new seeds from {first_seed} (the study used {used_text}){longer}.",
        f"# Run it: study plan {path.name}; study run {path.name}",
        "",
    ])
    return spec, header


def _seeds_text(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def _rerun_name(name: str) -> str:
    # A study's name has at most 100 characters (study/spec/names.py).
    return name[: 100 - len(SUFFIX)] + SUFFIX


def _seeds(seed: Any) -> list[int]:
    if isinstance(seed, list):
        return [int(s) for s in seed if isinstance(s, int)]
    return [int(seed)] if isinstance(seed, int) and not isinstance(seed, bool) else []


def _number(v: Any) -> str:
    try:
        return str(int(v))
    except (TypeError, ValueError):
        return "none"
