"""Whether a table cell learns at any of the learning rates it tried.

A cell whose every lr ends at the bias-only level (above ``LEARNS_NOT_ABOVE`` times it: "does not"
learn, study/report/verdict.py) has no best lr to establish: which lr is lowest is the noise of the
plateau, so a "best" that falls on the edge of the grid says nothing of an optimum beyond it.
Flagging it would send the grid wider without end (in the Table 3 evidence, SI scale 0.25 and 4
ended at 36.03-36.4 at every lr from 0.0003 to 0.02, and the noise put the lowest at whichever
lr was smallest). Such a cell is marked "learns at no lr tried" instead; the findings compare it
as it is, within the lrs tried, which the table lists.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from study.report.bias_only import bias_only_error, member_data_config
from study.report.verdict import LEARNS_NOT_ABOVE


def bias_only_of(group: pd.DataFrame) -> float | None:
    """The bias-only level of a cell's members (their task and data settings; the tasks cache
    it), or None where the members carry no task or its data cannot be read here."""
    if group.empty or "task" not in group or pd.isna(group["task"].iloc[0]):
        return None
    return bias_only_error(member_data_config(group.iloc[0]))[0]


def learns_at_no_lr(means: Sequence[float], level: float | None) -> bool:
    """Every lr's mean final error above ``LEARNS_NOT_ABOVE`` times the bias-only ``level``."""
    return level is not None and level > 0 and len(means) > 0 and min(means) > LEARNS_NOT_ABOVE * level
