"""The paper's published numbers (study/published_results.yaml) and the scale they were obtained at.

Every report prints these beside the study's own numbers; where the study ran at another scale
(fewer updates, a smaller or procedural data set, fewer seeds, shorter sequences) the differences
are spelled out next to them, so a reduced reproduction is never read as the paper's protocol.
"""

from __future__ import annotations

from typing import Any

from study.published import PUBLISHED_FILE, load_published  # noqa: F401  (the reports' own names)


def _close(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)), abs(float(b)))


def published_value(table: str, task: str, optimizer: str | None = None, **keys: float) -> float | None:
    """One published figure, e.g. ``published_value("table5", "addition", "nag", mu_0=0.995)``.

    At mu = 0 the paper prints one column for NAG and CM together (optimizer "any").
    """
    for row in load_published().get(table, []):
        if row["task"] != task:
            continue
        if optimizer is not None and row.get("optimizer") not in (optimizer, "any"):
            continue
        if all(k in row and _close(row[k], v) for k, v in keys.items()):
            return row.get("error")
    return None


def published_row(table: str, task: str, **match: Any) -> dict[str, Any] | None:
    for row in load_published().get(table, []):
        if row["task"] == task and all(row.get(k) == v for k, v in match.items()):
            return row
    return None


def paper_scale(family: str, task: str) -> dict[str, Any]:
    """The paper's protocol for a task: updates, batch, data set / sequence length, seeds."""
    s = load_published()["scale"][family]
    out: dict[str, Any] = {"updates": s["updates"], "batch_size": s["batch_size"]}
    if family == "autoencoder":
        data = s["data"].get(task, {})
        out["train_cases"] = data.get("train_cases")
        out["dataset"] = data.get("dataset")
        out["final_momentum_updates"] = s["final_momentum_updates"]
    else:
        out["seeds"] = s["seeds"]
        out["seq_length"] = s["seq_length"].get(task)
    return out


def study_scale(family: str, task: str, configs: list[dict[str, Any]], seeds: int, final_updates: int | None) -> dict[str, Any]:
    """The same facts for a study, read from its trials' resolved training configs."""
    first = configs[0] if configs else {}

    def values(key: str) -> list[Any]:
        return sorted({c.get(key) for c in configs}, key=lambda v: (v is None, v))

    out: dict[str, Any] = {"updates": values("updates"), "batch_size": values("batch_size")}
    if family == "autoencoder":
        dataset = first.get("dataset", "replica")
        out["train_cases"] = values("train_cases")
        out["dataset"] = (
            f"{task}-replica (procedural)" if dataset == "replica" else f"original {task} files"
        )
        out["final_momentum_updates"] = final_updates
    else:
        out["seeds"] = seeds
        out["seq_length"] = values("seq_length")
    return out


def _one(v: Any) -> Any:
    if isinstance(v, list):
        return v[0] if len(v) == 1 else v
    return v


def _fmt(v: Any) -> str:
    v = _one(v)
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def scale_differences(family: str, task: str, study: dict[str, Any]) -> list[str]:
    """'updates: 1,500 here vs 750,000 in the paper' lines for each fact that differs."""
    paper = paper_scale(family, task)
    lines = []
    for key, label in (
        ("updates", "updates"),
        ("batch_size", "minibatch"),
        ("dataset", "data set"),
        ("train_cases", "training cases"),
        ("final_momentum_updates", "final low-momentum updates"),
        ("seeds", "seeds"),
        ("seq_length", "sequence length T"),
    ):
        if key not in paper or key not in study:
            continue
        mine, theirs = _one(study[key]), paper[key]
        if mine is None or theirs is None:
            if mine is None and theirs is not None and key in ("train_cases", "seq_length", "batch_size"):
                continue  # None means the task's default, which is the paper's
            if theirs is None:
                continue
        if mine != theirs:
            lines.append(f"{label}: {_fmt(mine)} here vs {_fmt(theirs)} in the paper")
    return lines
