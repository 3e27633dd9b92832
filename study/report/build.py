"""Turning a study into a report directory: report.md, one CSV per table, PNG figures, and the same
files logged as artifacts of the study's MLflow parent run (``study report NAME``).

Which tables a study gets depends on its task and what it varied, never on its name:
autoencoders get Table 1 (per optimizer and mu_max), Table 2 (when NAG runs had a final
low-momentum phase) and Table 3 (when more than one SI scale was run); RNN problems get Table 5.
Every study gets a sensitivity curve per searched parameter and Optuna's importances (or a note
saying why not).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from study.locations import resolve
from study.report import figures, tables
from study.report.bias_only import bias_only_error
from study.report.data import StudyData, load_study, rnn_warmup_updates
from study.report.published import load_published, scale_differences, study_scale

REPORT_ARTIFACT_PATH = "report"
REPORT_FILES = ("report.md", "members.csv", "table[0-9].csv", "table[0-9].png", "sensitivity_*.csv",
                "sensitivity_*.png", "importances.csv", "importances.png", "optuna_slice.png", "curves.png",
                "curves_*.png")


@dataclass
class Report:
    study: StudyData
    out_dir: Path
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    markdown: str = ""
    mlflow_run_id: str | None = None


def default_out_dir(name: str, directory: str | None = None) -> Path:
    """The study directory's report/ folder (studies/<name>/report)."""
    return resolve(name, directory).study_dir / "report"


def _scale_lines(data: StudyData) -> list[str]:
    configs = [c for c in data.trials["config"] if isinstance(c, dict) and c]
    seeds = data.members.groupby([c for c in ("optimizer", "lr", "mu_max", "mu_0", "init_scale", "spectral_radius")
                                  if data.members[c].notna().any()], dropna=False).size()
    n_seeds = int(seeds.max()) if len(seeds) else 0
    finals = sorted(set(data.members["final_phase_updates"].dropna().astype(int)))
    scale = study_scale(data.family, data.task, configs, n_seeds, finals[0] if len(finals) == 1 else finals or None)
    return scale_differences(data.family, data.task, scale)


def _scale_block(data: StudyData) -> str:
    diffs = _scale_lines(data)
    if not diffs:
        return "Scale: as in the paper.\n"
    return ("**Scale differs from the paper** (the published numbers were obtained at the paper's scale):\n"
            + "\n".join(f"- {d}" for d in diffs) + "\n")


def _warmup_note(members: pd.DataFrame) -> str:
    """The RNN schedule holds mu = 0.9 for 1000 updates before mu_0 applies (sec. 4.2)."""
    updates = members["updates"].dropna()
    if updates.empty:
        return ""
    n = int(updates.max())
    warm = rnn_warmup_updates()
    if n <= warm:
        return f" **mu_0 never took effect**: runs of {n} updates end inside the {warm}-update warm-up at mu = 0.9."
    return f" mu_0 applied for the last {n - warm:,} of {n:,} updates (after the {warm}-update warm-up at mu = 0.9)."


def _paper_best_mu_max(task: str) -> float | None:
    """The mu_max of the paper's best NAG entry in Table 1: Table 2's row was taken there."""
    rows = [r for r in load_published().get("table1", []) if r["task"] == task and r["optimizer"] == "nag"]
    return float(min(rows, key=lambda r: r["error"])["mu_max"]) if rows else None


def curve_marks(members: pd.DataFrame, task: str) -> tuple[list[tuple[float, str]], list[tuple[float, str, str]],
                                                           list[str], str]:
    """What the learning curves mark for one task's members: where the momentum schedule changes
    phase, the bias-only levels (computed and the paper's), and a caption saying what is drawn.

    Phases: the RNN schedule holds mu = 0.9 for its warm-up, then mu_0 (sec. 4.2); Eq. 5 ramps
    mu up and the final low-momentum phase (mu <= 0.9) starts ``final_phase_updates`` before the
    end (sec. 3). Only phase changes inside the runs are drawn.
    """
    phases: list[tuple[float, str]] = []
    notes: list[str] = []
    updates = members["updates"].dropna()
    last = int(updates.max()) if len(updates) else 0
    if (members["momentum_schedule"] == "rnn").any():
        warm = rnn_warmup_updates()
        if warm < last:
            phases.append((warm, f"mu = 0.9 -> mu_0 (update {warm:,})"))
        else:
            notes.append(f"the runs end inside the {warm:,}-update warm-up at mu = 0.9 (mu_0 never applied)")
    finals = members[members["final_phase_updates"] > 0]
    for start in sorted({int(u - f) for u, f in zip(finals["updates"], finals["final_phase_updates"])}):
        phases.append((start, f"final phase, mu <= 0.9 (from update {start:,})"))
    levels: list[tuple[float, str, str]] = []
    configs = members.drop_duplicates(["task", "dataset", "data_dir", "train_cases", "eval_cases", "seq_length"])
    for _, c in configs.iterrows():
        config = {k: (None if pd.isna(c[k]) else c[k]) for k in
                  ("dataset", "data_dir", "train_cases", "eval_cases", "seq_length")}
        config = {k: (int(v) if k in ("train_cases", "eval_cases", "seq_length") and v is not None else v)
                  for k, v in config.items()}
        level, how = bias_only_error({"task": task, **config})
        if level is None:
            notes.append(how)
            continue
        where = f", T={config['seq_length']}" if config.get("seq_length") else ""
        levels.append((level, f"bias-only, {how}{where}: {figures.fmt_value(level)}", "computed"))
    paper = next((r["error"] for r in load_published().get("table5_biases", []) if r["task"] == task), None)
    if paper is not None:
        levels.append((float(paper), f"bias-only, paper Table 5: {figures.fmt_value(paper)}", "paper"))
    marked = [f"dotted vertical lines: {', '.join(t for _, t in phases)}"] if phases else []
    if levels:
        marked.append("horizontal lines: the bias-only error, of a model that learns its output biases only ("
                      + ("it predicts the mean image" if task in ("curves", "mnist", "faces")
                         else "it predicts the target mean, or the average target distribution")
                      + "), computed from the task's own data" + (", and the paper's" if paper is not None else ""))
    caption = f"Learning curves ({task}): " + "; ".join(marked + notes) + "." if marked or notes else ""
    return phases, levels, notes, caption


def _keys(table: pd.DataFrame, members: pd.DataFrame, own: list[str]) -> dict[str, str]:
    return {k: k for k in tables.other_varied(members, own) if k in table}


def _varied(members: pd.DataFrame, col: str) -> bool:
    return members[col].dropna().nunique() > 1


def _outcome_summary(members: pd.DataFrame) -> str:
    counts = members["outcome"].value_counts().to_dict()
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def build_report(
    name: str,
    directory: str | None = None,
    results_db: str | None = None,
    out_dir: str | Path | None = None,
) -> Report:
    """Computes every table and figure of a study and writes them under ``out_dir``."""
    data = load_study(name, directory, results_db)
    out = Path(out_dir) if out_dir else default_out_dir(name, directory)
    out.mkdir(parents=True, exist_ok=True)
    # A rerun must not leave an earlier run's table beside the new ones (only our own file names).
    for pattern in REPORT_FILES:
        for old in out.glob(pattern):
            old.unlink()
    rep = Report(study=data, out_dir=out)
    m = data.members
    task = data.task
    md: list[str] = [
        f"# Study report: {name}",
        "",
        f"Task **{task}**, study state **{data.state}**, {len(data.trials)} trial(s), {len(m)} member run(s) "
        f"({_outcome_summary(m) if len(m) else 'none'}). Metric: final training {data.metric} "
        f"(mean over seeds at the best learning rate, as in the paper).",
        "",
        f"Published values: {load_published()['source']}.",
        "",
        _scale_block(data),
        "Failures are shown, never dropped: a learning rate where any seed diverged is not eligible "
        "as \"best\"; `diverged`/`failed` count every member of the setting over all learning rates.",
        "",
    ]

    def add_table(key: str, df: pd.DataFrame, title: str, columns: dict[str, str], note: str = "",
                  level: str = "##") -> None:
        rep.tables[key] = df
        path = out / f"{key}.csv"
        df.to_csv(path, index=False)
        rep.files.append(path)
        md.extend([f"{level} {title}", "", note, "", tables.markdown(tables.display(df), columns), "",
                   f"CSV: `{path.name}`", ""])

    def add_figure(key: str, fig: Any, caption: str) -> None:
        rep.figures[key] = fig
        path = figures.save(fig, out / f"{key}.png")
        rep.files.append(path)
        md.extend([f"![{caption}]({path.name})", ""])

    best_cols = {"result_cell": "error (mean ± sd over seeds)", "best_lr": "best lr", "seeds": "seeds",
                 "n_diverged": "diverged", "n_failed": "failed or unfinished", "n_members": "runs", "lr_tried": "lr tried",
                 "paper": "paper"}
    if data.family == "autoencoder" and len(m):
        # A study of the SI scale alone (Table 3) would only repeat Table 3 as Table 1.
        show_table1 = _varied(m, "optimizer") or _varied(m, "mu_max") or not _varied(m, "init_scale")
    if data.family == "autoencoder" and len(m) and show_table1:
        t1 = tables.table1(m, task)
        add_table("table1", t1, "Table 1: best-lr error per mu_max and momentum type",
                  {"optimizer": "optimizer", "mu_max": "mu_max", **_keys(t1, m, ["optimizer", "mu_max"]), **best_cols},
                  "The paper's Table 1 at mu_max = 0 is one column for NAG and CM (plain SGD).")
        add_figure("table1", figures.table1_figure(t1, data.family, list(_keys(t1, m, ["optimizer", "mu_max"]))),
                   "Table 1")
    if data.family == "autoencoder" and len(m):
        if ((m["optimizer"] == "nag") & (m["final_phase_updates"] > 0)).any():
            t2 = tables.table2(m, task)
            add_table("table2", t2, "Table 2: NAG before and after the final low-momentum phase",
                      {"mu_max": "mu_max", **_keys(t2, m, ["optimizer", "mu_max"]), "best_lr": "best lr",
                       "final_phase_updates": "final-phase updates",
                       "before_step": "before: at update", "before": "before", "after": "after", "seeds": "seeds",
                       "n_diverged": "diverged", "result": "result", "paper_before": "paper before",
                       "paper_after": "paper after"},
                      "Before: the error at the last report before the final phase (mu <= 0.9) begins; "
                      "after: the final error. The paper's row is at its best mu_max and lr.")
            if (t2["result"] == "ok").any():
                add_figure("table2", figures.table2_figure(t2, list(_keys(t2, m, ["optimizer", "mu_max"])),
                                                           _paper_best_mu_max(task)), "Table 2")
        if _varied(m, "init_scale"):
            t3 = tables.table3(m, task)
            add_table("table3", t3, "Table 3: error against the SI scale multiplier",
                      {"optimizer": "optimizer", "init_scale": "SI scale", **_keys(t3, m, ["optimizer", "init_scale"]),
                       **best_cols},
                      "The paper: Curves, NAG, 750,000 updates.")
            add_figure("table3", figures.table3_figure(t3, list(_keys(t3, m, ["optimizer", "init_scale"]))),
                       "Table 3")
    elif len(m):
        t5 = tables.table5(m, task)
        tasks = sorted(set(m["task"].dropna())) or [task]
        biases = {r["task"]: r["error"] for r in load_published().get("table5_biases", [])}
        bias = "; ".join(f"{t}: {biases.get(t)}" for t in tasks)
        add_table("table5", t5, f"Table 5: zero-one error per mu_0 and momentum type ({', '.join(tasks)})",
                  {"optimizer": "optimizer", "mu_0": "mu_0", **_keys(t5, m, ["optimizer", "mu_0"]), **best_cols,
                   "min": "min", "max": "max"},
                  "Mean over seeds (population members and/or trials with different seeds) at the best lr; "
                  f"sd, min and max over those seeds. The paper's bias-only error ({bias})."
                  + _warmup_note(m))
        add_figure("table5", figures.table5_figure(t5, ", ".join(tasks), list(_keys(t5, m, ["optimizer", "mu_0"]))),
                   "Table 5")

    # Learning curves, grouped by what the study varied (learning rate excluded: too many lines),
    # one figure per task where a study searched over tasks.
    if len(data.points):
        keys = [c for c in ("optimizer", "mu_max", "mu_0", "init_scale", "spectral_radius") if _varied(m, c)] or ["optimizer"]
        by_task = list(m.groupby(m["task"].fillna(task), sort=True))
        for task_name, tm in by_task:
            phases, levels, notes, caption = curve_marks(tm, str(task_name))
            key = "curves" if len(by_task) == 1 else f"curves_{task_name}"
            fig = figures.curves_figure(data.points[data.points["trial_id"].isin(tm["trial_id"])], tm, keys,
                                        data.family, phases, levels, f"Learning curves ({task_name})", notes)
            md.extend([caption, ""])
            add_figure(key, fig, f"Learning curves ({task_name})")

    md.extend(["## Sensitivity", ""])
    searched = data.searched
    if not searched:
        md.extend(["Nothing was searched.", ""])
    for field_name, param in searched.items():
        if field_name not in m or m[field_name].dropna().empty:
            md.extend([f"`{field_name}`: no values recorded.", ""])
            continue
        # The paper's values only where one task was run: a curve over several tasks has none.
        one_task = m["task"].dropna().nunique() <= 1
        s = tables.sensitivity(m, field_name, param, task=task if data.metric == "error" and one_task else None)
        key = f"sensitivity_{field_name}"
        add_table(key, s.rename(columns={"x": s.attrs["label"]}), f"Sensitivity to {field_name}",
                  {s.attrs["label"]: s.attrs["label"], "best": "best", "median": "median", "n": "runs",
                   "n_completed": "completed", "n_diverged": "diverged", "n_failed": "failed",
                   **({"paper": "paper (best of NAG, CM)"} if s["paper"].notna().any() else {})},
                  "Best and median final error over every other parameter"
                  + (" (log x axis)." if s.attrs["log"] else "."), level="###")
        add_figure(key, figures.sensitivity_figure(s, data.family, data.metric), f"Sensitivity to {field_name}")

    md.extend(["## Parameter importances (Optuna)", ""])
    imp, why = tables.importances(name, data.results_db, data.spec)
    if imp is None:
        rep.notes.append(f"importances {why}")
        md.extend([f"Importances {why}.", ""])
    else:
        finite, _ = tables.finite_optuna_study(name, data.results_db, data.spec)
        add_table("importances", imp, "Importances", {"parameter": "parameter", "importance": "importance"},
                  "optuna.importance.get_param_importances (fANOVA, seed 0) over completed trials with a finite "
                  "objective; the figure is Optuna's plot_param_importances on the same trials.",
                  level="###")
        add_figure("importances", figures.importance_figure(finite, tables.importance_evaluator()), "Importances")
        md.extend(["### Slice plot (Optuna)", "",
                   "optuna.visualization.matplotlib.plot_slice: each finite trial's objective (the mean over its "
                   "members) against each sampled parameter, under the sampler's names.", ""])
        add_figure("optuna_slice", figures.optuna_slice_figure(finite), "Slice plot")

    per_member = out / "members.csv"
    m.to_csv(per_member, index=False)
    rep.files.append(per_member)
    md.extend(["## Every run", "", f"One row per (trial, member) with its outcome: `{per_member.name}`.", "",
               f"_Generated {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC} by `study report {name}`._", ""])
    rep.markdown = "\n".join(md)
    md_path = out / "report.md"
    md_path.write_text(rep.markdown)
    rep.files.insert(0, md_path)
    return rep


def log_to_mlflow(rep: Report, mlflow_uri: str | None = None) -> str:
    """Logs the report directory as artifacts (under ``report/``) of the study's MLflow parent run."""
    from mlflow.tracking import MlflowClient

    run_id = rep.study.mlflow_parent_run_id
    uri = mlflow_uri or rep.study.mlflow_uri
    if not run_id or not uri:
        raise ValueError(f"study {rep.study.name!r} has no MLflow parent run recorded in the results DB")
    MlflowClient(tracking_uri=uri).log_artifacts(run_id, str(rep.out_dir), artifact_path=REPORT_ARTIFACT_PATH)
    rep.mlflow_run_id = run_id
    return run_id
