"""Plain SGD run once, shown under CM and NAG (Table 1's mu_max = 0 column): the members of a
grid that ran it as CM only (study/spec/expand.py, ``sgd_duplicates``) are listed for NAG too."""

from __future__ import annotations


import pandas as pd

from study.report.stats import or_none

SGD_SHARED = "sgd_shared"


def with_shared_sgd(members: pd.DataFrame) -> pd.DataFrame:
    """``members`` with column ``sgd_shared``: each CM member that kept mu = 0 at every update
    (mu_max 0 under Eq. 5 or a constant schedule) is also listed as a NAG member, marked, where the
    study ran NAG but not at that member's setting; the CM member is marked too. One set of runs,
    shown in both columns, never counted as two seeds of either."""
    from study.report.data import CONFIG_FIELDS, NOT_SETTINGS
    from study.spec.expand import SGD_TWINS, ZERO_MU_SCHEDULES

    out = members.copy()
    out[SGD_SHARED] = False
    if out.empty or not {"optimizer", "mu_max", "momentum_schedule"} <= set(out) or not (out["optimizer"] == "nag").any():
        return out
    zero = (pd.to_numeric(out["mu_max"], errors="coerce") == 0) & out["momentum_schedule"].isin(ZERO_MU_SCHEDULES)
    fields = [c for c in dict.fromkeys(("task", *CONFIG_FIELDS)) if c in out and c != "optimizer" and c != "seed"
              and c not in NOT_SETTINGS]

    def setting(row: pd.Series) -> tuple:
        return tuple(repr(or_none(row[c])) for c in fields)

    cm, nag = SGD_TWINS
    ran = {setting(r) for _, r in out[zero & (out["optimizer"] == nag)].iterrows()}
    shared = [i for i, r in out[zero & (out["optimizer"] == cm)].iterrows() if setting(r) not in ran]
    if not shared:
        return out
    out.loc[shared, SGD_SHARED] = True
    twins = out.loc[shared].assign(optimizer=nag)
    return pd.concat([out, twins], ignore_index=True)


__all__ = ["SGD_SHARED", "with_shared_sgd"]
