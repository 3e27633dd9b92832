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

from study.code_version import code_version
from study.locations import resolve
from study.report import figures, protocol, tables, time_to_target
from study.report.bias_only import DATA_FIELDS, bias_only_error, member_data_config
from study.report.data import StudyData, family, load_study, rnn_warmup_updates
from study.report.figures.curves import curves_figure
from study.report.figures.search import importance_figure, optuna_slice_figure, sensitivity_figure
from study.report.figures.style import fmt_value
from study.report.finding_verdicts import COLUMNS, evaluate
from study.report.published import load_published, scale_differences, study_scale
from study.report.sections import Section, paper_tables
from trainables.tasks import task_for

REPORT_ARTIFACT_PATH = "report"
REPORT_FILES = ("report.md", "members.csv", "findings.csv", "table[0-9].csv", "table[0-9].png", "table[0-9]_*.png", "sensitivity_*.csv",
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
    verdicts: list[str] = field(default_factory=list)  # one line per judged finding, as `study report` prints them
    markdown: str = ""
    mlflow_run_id: str | None = None


@dataclass
class Block:
    """One problem's part of a table (``task`` None: a table that is not per problem)."""

    task: str | None
    table: pd.DataFrame
    note: str
    figure: Any = None


FINDINGS_NOTE = (
    "Each of the paper's findings that this study's tables can judge, decided from the per-seed values of the two "
    "cells it compares (study/report/findings.py): **holds** where the 95% intervals of the two means separate in "
    "the paper's direction, or where the paired 95% t interval of the differences over the seeds both cells ran "
    "excludes 0 that way; **contradicted** the same against the paper; **direction** where neither separates and "
    "the means agree with the paper; **direction against** where neither separates and they do not; **not "
    "testable** with the reason (a cell missing or failed, fewer than 2 seeds, a best lr at the edge of its grid, "
    "a schedule or budget under which the finding cannot show). Figures: mean [95% interval] n of the cell the "
    "paper says is better, of the other, and of the paired differences (worse - better: positive is the paper's "
    "way).")


def _version_line(data: StudyData) -> str:
    """The code the study ran on, from its row of the results database, and the code of this report."""
    ran_on = data.code_version or "not recorded (a study made before versions were recorded)"
    line = f"Code version: the study ran on **{ran_on}**; this report was made by {code_version()}."
    if data.created_at is not None and data.updated_at is not None:
        line += (f" Study created {data.created_at:%Y-%m-%d %H:%M} UTC, last state change "
                 f"{data.updated_at:%Y-%m-%d %H:%M} UTC.")
    return line


def default_out_dir(name: str, directory: str | None = None) -> Path:
    """The study directory's report/ folder (studies/<name>/report)."""
    return resolve(name, directory).study_dir / "report"


def _scale_lines(data: StudyData, task: str) -> list[str]:
    m = data.members[data.members["task"] == task] if "task" in data.members else data.members
    configs = [c for c in data.trials["config"] if isinstance(c, dict) and c and c.get("task", task) == task]
    keys = [c for c in ("optimizer", "lr", *tables.other_varied(m, ["optimizer"])) if m[c].notna().any()]
    seeds = m.groupby(keys, dropna=False).size() if keys else pd.Series([len(m)])
    n_seeds = int(seeds.max()) if len(seeds) and len(m) else 0
    finals = sorted(set(m["final_phase_updates"].dropna().astype(int)))
    fam = family(task)
    scale = study_scale(fam, task, configs, n_seeds, finals[0] if len(finals) == 1 else finals or None)
    return scale_differences(fam, task, scale)


def _scale_block(data: StudyData, tasks: list[str]) -> str:
    """Every way the study's scale differs from the paper's, per problem where it ran several."""
    diffs = [(t, d) for t in tasks for d in _scale_lines(data, t)]
    if not diffs:
        return "Scale: as in the paper.\n"
    return ("**Scale differs from the paper** (the published numbers were obtained at the paper's scale):\n"
            + "\n".join(f"- {t + ': ' if len(tasks) > 1 else ''}{d}" for t, d in diffs) + "\n")


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
    configs = members.drop_duplicates(list(DATA_FIELDS))
    for _, c in configs.iterrows():
        config = {**member_data_config(c), "task": task}
        level, how = bias_only_error(config)
        if level is None:
            notes.append(how)
            continue
        where = f", T={config['seq_length']}" if config.get("seq_length") else ""
        levels.append((level, f"bias-only, {how}{where}: {fmt_value(level)}", "computed"))
    paper = next((r["error"] for r in load_published().get("table5_biases", []) if r["task"] == task), None)
    if paper is not None:
        levels.append((float(paper), f"bias-only, paper Table 5: {fmt_value(paper)}", "paper"))
    marked = [f"dotted vertical lines: {', '.join(t for _, t in phases)}"] if phases else []
    if levels:
        marked.append("horizontal lines: the bias-only error, of a model that learns its output biases only ("
                      f"it predicts {task_for(task).bias_only_prediction}), computed from the task's own data"
                      + (", and the paper's" if paper is not None else ""))
    caption = f"Learning curves ({task}): " + "; ".join(marked + notes) + "." if marked or notes else ""
    return phases, levels, notes, caption


def _outcome_summary(members: pd.DataFrame) -> str:
    counts = members["outcome"].value_counts().to_dict()
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def build_report(
    name: str,
    directory: str | None = None,
    results_db: str | None = None,
    out_dir: str | Path | None = None,
    provenance: list[str] | None = None,
) -> Report:
    """Computes every table and figure of a study and writes them under ``out_dir``; ``provenance``:
    Markdown lines on how the study was made (`study evidence` gives its command and wall time)."""
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
    # One block per problem wherever a study ran several: tables, sensitivity, learning curves.
    tasks = sorted(set(m["task"].dropna())) or [task]
    by_task = {t: m[m["task"] == t] for t in tasks} if m["task"].notna().any() else {task: m}
    md: list[str] = [
        f"# Study report: {name}",
        "",
        _version_line(data),
        "",
        *([*provenance, ""] if provenance else []),
        f"Task{'s' if len(tasks) > 1 else ''} **{', '.join(tasks)}**, study state **{data.state}**, "
        f"{len(data.trials)} configuration(s), {len(m)} member run(s) "
        f"({_outcome_summary(m) if len(m) else 'none'}). Metric: final training {data.metric} "
        f"(mean over seeds at the best learning rate, as in the paper, with its 95% interval over seeds).",
        "",
        f"Published values: {load_published()['source']}.",
        "",
        _scale_block(data, tasks),
        "Failures are shown, never dropped: a learning rate where any seed diverged is not eligible "
        "as \"best\"; `diverged`/`failed` count every member of the setting over all learning rates.",
        "",
        "Cells read \"mean ± h\": the mean over seeds and the half-width h of its 95% interval (Student t, "
        "n - 1 degrees of freedom; \"n/a\" for a single seed); the CSVs hold the interval's ends.",
        "",
    ]

    def add_figure(key: str, fig: Any, caption: str) -> None:
        rep.figures[key] = fig
        path = figures.save(fig, out / f"{key}.png")
        rep.files.append(path)
        md.extend([f"![{caption}]({path.name})", ""])

    def add_table(key: str, title: str, columns: dict[str, str], blocks: list[Block], level: str = "##") -> None:
        """One CSV for the table; in the Markdown one block per problem where there are several."""
        frames = [b.table if b.task is None or "task" in b.table else b.table.assign(task=b.task)[
            ["task", *b.table.columns]] for b in blocks]
        df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        df.attrs.update(blocks[0].table.attrs)
        rep.tables[key] = df
        path = out / f"{key}.csv"
        df.to_csv(path, index=False)
        rep.files.append(path)
        several = len(blocks) > 1
        md.extend([f"{level} {title}" + (f" ({blocks[0].task})" if not several and blocks[0].task else ""), ""])
        if several:
            md.extend([f"One block per problem ({', '.join(str(b.task) for b in blocks)}), each with its own "
                       "published values" + ("; the best lr is chosen within a problem" if key.startswith("table")
                                             else "; never pooled over problems") + f". CSV: `{path.name}`.", ""])
        for b in blocks:
            if several:
                md.extend([f"{level}# {b.task}", ""])
            md.extend([b.note, "", tables.markdown(tables.display(b.table), columns), ""])
            if not several:
                md.extend([f"CSV: `{path.name}`", ""])
            if b.figure is not None:
                add_figure(f"{key}_{b.task}" if several else key, b.figure,
                           f"{title} ({b.task})" if b.task else title)

    sections: dict[str, list[Block]] = {}
    heads: dict[str, Section] = {}
    judged: list[dict[str, Any]] = []
    for t, tm in by_task.items():
        for sec in paper_tables(tm, t):
            sec = time_to_target.timed(sec, tm, data, t)
            heads.setdefault(sec.key, sec)
            sections.setdefault(sec.key, []).append(Block(t, sec.table, sec.note, sec.figure))
            judged += evaluate(sec.key, sec.table, tm, t)
    for key, blocks in sections.items():
        add_table(key, heads[key].title, heads[key].columns, blocks)
    if judged:
        verdicts = pd.DataFrame(judged)
        rep.verdicts = [f"{r['table']} {r['task']}{' (' + r['rows'] + ')' if r['rows'] else ''}: {r['finding']}: "
                        f"{r['verdict']} ({r['why']}; {r['figures']})" for r in judged]
        add_table("findings", "Findings: verdicts computed from the numbers", COLUMNS,
                  [Block(None, verdicts, FINDINGS_NOTE)])

    # Learning curves, grouped by what the study varied (learning rate excluded: too many lines),
    # one figure per task where a study searched over tasks.
    if len(data.points):
        for task_name, tm in by_task.items():
            keys = tables.other_varied(tm, []) or ["optimizer"]
            phases, levels, notes, caption = curve_marks(tm, str(task_name))
            key = "curves" if len(by_task) == 1 else f"curves_{task_name}"
            fig = curves_figure(data.points[data.points["trial_id"].isin(tm["trial_id"])], tm, keys,
                                family(task_name), phases, levels, f"Learning curves ({task_name})", notes)
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
        # Per problem (with its published values), unless the task is the field itself.
        groups = {None: m} if field_name == "task" else by_task
        blocks = []
        for t, tm in groups.items():
            # The paper's values only where its protocol matches (schedule, mu_0 in force).
            unmatched = (protocol.paper_mismatch(tables.PAPER_TABLE_OF[field_name], pd.Series(dtype=object), tm)
                         if field_name in tables.PAPER_TABLE_OF and t is not None else None)
            s = tables.sensitivity(tm, field_name, param,
                                   task=t if data.metric == "error" and unmatched is None else None)
            over = tables.other_varied(tm, [field_name], select="")
            note = ("Best and median final error over every other parameter the study varied"
                    + (f": {', '.join(over)}." if over else ".") + (" Log x axis." if s.attrs["log"] else "")
                    + protocol.mismatch_note([unmatched] if unmatched else []))
            fig = sensitivity_figure(s, family(t or task), data.metric)
            blocks.append(Block(t, s.rename(columns={"x": s.attrs["label"]}), note, fig))
        label = blocks[0].table.attrs["label"]
        has_paper = any(b.table["paper"].notna().any() for b in blocks)
        add_table(f"sensitivity_{field_name}", f"Sensitivity to {field_name}",
                  {label: label, "best": "best", "median": "median", "n": "runs", "n_completed": "completed",
                   "n_diverged": "diverged", "n_pruned": "pruned", "n_failed": "failed",
                   **({"paper": "paper (best of NAG, CM)"} if has_paper else {})}, blocks, level="###")

    md.extend(["## Parameter importances (Optuna)", ""])
    imp, why = tables.importances(name, data.results_db, data.spec)
    if imp is None:
        rep.notes.append(f"importances {why}")
        md.extend([f"Importances {why}.", ""])
    else:
        if imp.attrs.get("caveat"):
            rep.notes.append(f"importances {imp.attrs['caveat']}".replace("**", ""))
        finite, _ = tables.finite_optuna_study(name, data.results_db, data.spec)
        add_table("importances", "Importances", {"parameter": "parameter", "importance": "importance"},
                  [Block(None, imp, "optuna.importance.get_param_importances (fANOVA, seed 0) over the "
                         f"{imp.attrs['n_trials']} completed trials with a finite objective; the figure is Optuna's "
                         "plot_param_importances on the same trials."
                         + (f" Importances {imp.attrs['caveat']}." if imp.attrs.get("caveat") else ""),
                         importance_figure(finite, tables.importance_evaluator()))], level="###")
        md.extend(["### Slice plot (Optuna)", "",
                   "optuna.visualization.matplotlib.plot_slice: each finite trial's objective (the mean over its "
                   "members) against each sampled parameter, under the sampler's names.", ""])
        add_figure("optuna_slice", optuna_slice_figure(finite), "Slice plot")

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
    from study.record import tracking_experiment  # MLflow loads only when a report is logged (--no-mlflow skips it)

    run_id = rep.study.mlflow_parent_run_id
    uri = mlflow_uri or rep.study.mlflow_uri
    if not run_id or not uri:
        raise ValueError(f"study {rep.study.name!r} has no MLflow parent run recorded in the results DB")
    tracking_experiment.log_directory(uri, run_id, rep.out_dir, REPORT_ARTIFACT_PATH)
    rep.mlflow_run_id = run_id
    return run_id
