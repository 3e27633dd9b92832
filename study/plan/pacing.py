"""How many new suggestions a study may have asked of a sampler that learns from results (TPE, GP,
CMA-ES) before it has their results: the rule the searcher (study/run/searcher.py) paces its
populations by, `study plan` sizes them by, and the warnings about specs that leave such a sampler
blind. Grid, random and QMC samplers learn nothing from results and are not paced.

The rule (docs/study-specs.md, "Model-based search sees results"):

- Start-up: the sampler's first ``startup`` suggestions do not depend on results (TPE's and GP's
  ``n_startup_trials``, 10 by default; CMA-ES's first generation). They are handed out freely, as
  populations fill, but the first populations together take no more than ``startup``.
- After it, at most ``window`` configurations are asked and without a result at any time (a
  configuration has a result once it has ended: completed, diverged, pruned or failed): for TPE
  and GP ``ceil((trials - startup) / ROUNDS)``, so the informed part of the study takes at least
  ``ROUNDS`` rounds of results; for CMA-ES one generation (``popsize``), so each generation is
  sampled from the one told before it.

- Shared by the trials that run at once (``slots``): a population takes at most its share of the
  start-up, then of the window, ``ceil(startup / slots)`` and ``ceil(window / slots)``. Without
  it the first population took the whole start-up and the second trial slot nothing: Ray Tune
  starts that slot's worker only once the searcher hands it a population, a start that costs
  seconds (a process that imports torch), and a population ending before it is ready hands its
  own worker over, so a fused study under ASHA trained one population at a time
  (docs/benchmarks.md, "TPE with fusion against TPE without it").

A population takes what the rule allows when it is filled, and trains those configurations even
if they are fewer than ``configs_per_trial``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

# Rounds of results the informed part of a TPE or GP study is spread over, at least.
ROUNDS = 4


@dataclass(frozen=True)
class Pacing:
    sampler: str  # "tpe", "gp", "cmaes"
    startup: int  # suggestions made before any result counts
    window: int  # after start-up: configurations asked and without a result, at most
    startup_what: str  # where ``startup`` comes from, for messages ("n_startup_trials=10")
    # Trials at once, which share the start-up and the window (a searcher pickled before it had
    # this field reads the class default).
    slots: int = 1

    def allowed(self, asked: int, pending: int) -> int:
        """New suggestions the next population may take now, with ``asked`` asked so far and
        ``pending`` of them without a result: what is left of the start-up or of the window, and
        no more than the population's share of it (module docstring)."""
        if asked < self.startup:
            return min(self.startup - asked, self._share(self.startup))
        return max(0, min(self.window - pending, self._share(self.window)))

    def _share(self, n: int) -> int:
        return math.ceil(n / max(1, self.slots))


def pacing(sampler: str, trials: int, startup: int, generation: int | None = None, slots: int = 1) -> Pacing | None:
    """The pacing of a ``sampler`` study of ``trials`` configurations whose sampler makes ``startup``
    suggestions without results (``generation``: CMA-ES's popsize), ``slots`` trials at once; None
    for samplers that do not learn from results."""
    if sampler == "cmaes" and generation:
        return Pacing(sampler, max(startup, generation), generation, f"one generation, popsize={generation}", slots)
    if sampler in ("tpe", "gp"):
        return Pacing(sampler, startup, max(1, math.ceil((trials - startup) / ROUNDS)), f"n_startup_trials={startup}",
                      slots)
    return None


@dataclass(frozen=True)
class Handed:
    """One population as the searcher hands it out, in a plan's schedule (``schedule``)."""

    shape: int  # index of its shape in the plan (a population holds one shape)
    configs: int
    start: float  # seconds from the study's start
    end: float


def schedule(pace: Pacing | None, counts: list[int], per_trial: int, slots: int, parallel: float,
             seconds: Callable[[int, int], float]) -> list[Handed]:
    """The populations of a study in the order the searcher hands them out, with when each trains:
    a plan's figure, for a study whose configurations all train to their end (with ASHA, one
    stopped at a rung has its result sooner, and the next suggestions come sooner).

    As Tune drives the searcher: whenever fewer than ``slots`` populations train, the next one
    takes at most ``per_trial`` configurations of the current shape (``counts``: configurations
    of each shape, handed out shape after shape), and with a sampler that learns no more than
    ``Pacing.allowed`` gives, the configurations of the populations still training pending; a
    slot given nothing waits for the next population to end. ``seconds(shape, configs)``: a
    population's training time alone; ``parallel`` of the populations training at once go at
    full speed, and more share it (each at ``parallel / k`` with ``k`` training)."""
    left, shape, asked, now = list(counts), 0, 0, 0.0
    training: list[list[Any]] = []  # [work left in seconds at full speed, index in out]
    out: list[list[Any]] = []  # [shape, configs, start, end]
    while True:
        while len(training) < slots and shape < len(left):
            if left[shape] == 0:
                shape += 1
                continue
            n = min(per_trial, left[shape])
            if pace is not None:
                n = min(n, pace.allowed(asked, sum(out[i][1] for _, i in training)))
            if n <= 0:
                break  # waits for a result
            training.append([seconds(shape, n), len(out)])
            out.append([shape, n, now, now])
            left[shape] -= n
            asked += n
        if not training:
            break
        speed = min(1.0, parallel / len(training))
        step = min(work for work, _ in training)
        now += step / speed
        for t in training:
            t[0] -= step
        for work, i in training:
            if work <= 1e-9 * max(1.0, step):
                out[i][3] = now
        training = [t for t in training if t[0] > 1e-9 * max(1.0, step)]
    return [Handed(s, n, start, end) for s, n, start, end in out]


def blind_warnings(pace: Pacing | None, trials: int, field_hint: str) -> list[str]:
    """What leaves a learning sampler blind in a spec, said before anything runs."""
    if pace is None:
        return []
    if trials <= pace.startup:
        return [
            f"sampler.type={pace.sampler} learns nothing in this study: num_samples={trials} is no more than the "
            f"suggestions it makes before it uses any result ({pace.startup_what}), so every configuration is "
            f"sampled blind, as random search would; raise num_samples above {pace.startup} or lower {field_hint}"
        ]
    if trials - pace.startup < ROUNDS and pace.sampler != "cmaes":
        return [
            f"sampler.type={pace.sampler} sees few results: of num_samples={trials}, {trials - pace.startup} "
            f"come after its {pace.startup} start-up suggestions ({pace.startup_what}); raise num_samples or "
            f"lower {field_hint}"
        ]
    return []
