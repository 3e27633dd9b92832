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

A population takes what the rule allows when it is filled, and trains those configurations even
if they are fewer than ``configs_per_trial``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Rounds of results the informed part of a TPE or GP study is spread over, at least.
ROUNDS = 4


@dataclass(frozen=True)
class Pacing:
    sampler: str  # "tpe", "gp", "cmaes"
    startup: int  # suggestions made before any result counts
    window: int  # after start-up: configurations asked and without a result, at most
    startup_what: str  # where ``startup`` comes from, for messages ("n_startup_trials=10")

    def allowed(self, asked: int, pending: int) -> int:
        """New suggestions that may be asked now, with ``asked`` asked so far and ``pending`` of
        them without a result."""
        if asked < self.startup:
            return self.startup - asked
        return max(0, self.window - pending)


def pacing(sampler: str, trials: int, startup: int, generation: int | None = None) -> Pacing | None:
    """The pacing of a ``sampler`` study of ``trials`` configurations whose sampler makes ``startup``
    suggestions without results (``generation``: CMA-ES's popsize); None for samplers that do not
    learn from results."""
    if sampler == "cmaes" and generation:
        return Pacing(sampler, max(startup, generation), generation, f"one generation, popsize={generation}")
    if sampler in ("tpe", "gp"):
        return Pacing(sampler, startup, max(1, math.ceil((trials - startup) / ROUNDS)), f"n_startup_trials={startup}")
    return None


def population_sizes(pace: Pacing | None, trials: int, per_trial: int) -> list[int]:
    """The configurations of each population in order, when populations end one after the other
    (a plan's figure: with ASHA, configurations pruned early let the next ask come sooner)."""
    if pace is None:
        full, rest = divmod(trials, per_trial)
        return [per_trial] * full + ([rest] if rest else [])
    sizes, asked = [], 0
    while asked < trials:
        # Start-up populations, then each one once the one before has ended (nothing pending).
        n = min(per_trial, pace.allowed(asked, 0), trials - asked)
        sizes.append(n)
        asked += n
    return sizes


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
