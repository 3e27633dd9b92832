"""The study's ASHA record, shared by every population: one named Ray actor per running study.

ASHA judges a configuration at a rung against every configuration of the study that reached that
rung (study/plan/population.py, ``AshaRule``), but populations train in Ray workers, possibly on
other nodes, at the same time. So the record lives in one place every worker reaches: an actor
the driver creates for the run (``board``) under a name derived from the study's name, which a
trial looks up (``find``) and asks, one call per report that reaches a rung. Decisions are taken
one at a time in the actor, in the order the reports arrive, as Ray Tune's ASHAScheduler takes
them in its driver loop. The actor takes no CPU (a trial's CPUs stay the trial's) and runs on the
driver's node, so it can keep the record in the study directory (``RUNGS_FILE``), written after
every decision: `study resume` starts the next board from it, and a resumed study judges its
rungs against everything recorded before the interruption. The actor lives as long as the
driver's run (it is owned by the driver, and killed when the run ends).

A board written by a killed driver may miss the last decisions (a write interrupted): the file is
replaced atomically, so it is the record as of one decision earlier, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import ray

from study.errors import ServiceError
from study.plan.population import AshaRule, MemberRungs
from study.spec.model import StudySpec

log = logging.getLogger(__name__)

RUNGS_FILE = "rungs.json"
# Named actors are looked up in a namespace; a fixed one lets a trial find its study's board
# whatever namespace the driver's job got (a resumed driver's differs from the first one's).
NAMESPACE = "momentum-study"


def board_name(study: str) -> str:
    return f"rungs:{study}"


def uses_board(spec: StudySpec) -> bool:
    """A fused study with ASHA: its populations stop configurations at the study's rungs (with
    ``fuse: off`` Ray Tune's ASHAScheduler does it, study/run/tuner.py)."""
    return spec.scheduler.type == "asha" and spec.fuse != "off"


def rule(spec: StudySpec, reports: int) -> AshaRule:
    s = spec.scheduler
    return AshaRule(s.grace_period, s.reduction_factor, s.max_t or reports, spec.mode)


@ray.remote(num_cpus=0)
class RungBoard:
    """The study's ``AshaRule`` in an actor, saved to ``path`` (when given) after every decision."""

    def __init__(self, grace_period: int, reduction_factor: float, max_t: int, mode: str, path: str | None):
        self.rule = AshaRule(grace_period, reduction_factor, max_t, mode)
        self.path = path
        if path and os.path.isfile(path):
            with open(path) as f:
                self.rule.load(json.load(f))

    def decide_all(self, asked: list[tuple[str, int, float | None]]) -> list[bool]:
        stops = [self.rule.decide(key, report, value) for key, report, value in asked]
        if self.path:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.rule.state(), f)
            os.replace(tmp, self.path)
        return stops

    def state(self) -> dict[str, Any]:
        return self.rule.state()


@contextlib.contextmanager
def board(spec: StudySpec, study_dir: Path | None, reports: int) -> Iterator[Any]:
    """The study's board for the length of a run (None when the study has none); it starts from
    the record a previous run of the study left in ``study_dir``."""
    if not uses_board(spec):
        yield None
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = board_name(spec.name)
    try:
        ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass  # none: the usual case (a board dies with the driver that made it)
    else:
        raise ServiceError(
            f"study {spec.name!r} cannot start: a study of that name is running on this Ray cluster (its driver "
            f"holds the named actor {name!r} in namespace {NAMESPACE!r}); wait for it, stop it, or give the spec "
            "another name"
        )
    r = rule(spec, reports)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    path = str(study_dir / RUNGS_FILE) if study_dir is not None else None
    actor = RungBoard.options(name=name, namespace=NAMESPACE, scheduling_strategy=here).remote(
        spec.scheduler.grace_period, spec.scheduler.reduction_factor, r.max_t, spec.mode, path)
    ray.get(actor.state.remote())  # up (and its saved record read) before any trial asks it
    try:
        yield actor
    finally:
        ray.kill(actor)


class _Remote:
    """A board actor as ``MemberRungs`` asks a board: ``decide_all``, waited for."""

    def __init__(self, actor: Any):
        self.actor = actor

    def decide_all(self, asked: list[tuple[str, int, float | None]]) -> list[bool]:
        return ray.get(self.actor.decide_all.remote(asked))


def population_rungs(spec: StudySpec, config_ids: list[str], reports: int) -> MemberRungs | None:
    """What a trial's population stops its configurations by: the study's board (found by name),
    or None when the study has no rungs. A trial run without its driver's board (a Ray trial
    started by hand) judges its own configurations only, and says so."""
    if not uses_board(spec):
        return None
    s = spec.scheduler
    try:
        shared: Any = _Remote(ray.get_actor(board_name(spec.name), namespace=NAMESPACE))
    except ValueError:
        log.warning("no rung board for study %r: this population's configurations are judged among themselves",
                    spec.name)
        shared = None
    return MemberRungs(s.grace_period, s.reduction_factor, s.max_t or reports, spec.mode,
                       config_ids=config_ids, last_report=reports, board=shared)
