"""`study evidence`: every report under docs/results/ made from scratch, with the current code, by
one command.

The studies are listed in a manifest (``search_spaces/evidence.yaml``): for each, in order, any
earlier study of that name in the evidence's studies directory is deleted (`study delete`), the
spec is run with `study run`, as a user would run it, and `study report` writes its report to
``<out>/<name>/``, headed by the code version, the command and the wall time. Then
``<out>/README.md`` is written from the reports' own findings tables: the summary of verdicts there
is computed, never typed.

Each study runs as its own `study` process (a fresh local Ray each, nothing left from the one
before); the report is built in this process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from study.code_version import code_version
from study.errors import LocationError, SpecError
from study.locations import resolve
from study.record import results
from study.spec.model import describe, load_spec
from study.spec.reader import read_source

DEFAULT_MANIFEST = Path("search_spaces/evidence.yaml")
DEFAULT_OUT = Path("docs/results")
DEFAULT_STUDIES = Path("studies/evidence")
PROVENANCE_FILE = "provenance.json"


class EvidenceStudy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: str = Field(description="the spec's file, relative to the manifest's folder")
    why: str = Field(description="what the study is for: prose that explains, never a verdict")


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    about: str = Field(description="what the reports are and what they are not (prose, no verdicts)")
    budget_minutes: int = Field(gt=0, description="the whole set's wall time on the reference machine")
    studies: list[EvidenceStudy] = Field(min_length=1)

    @field_validator("studies")
    @classmethod
    def _unique(cls, v: list[EvidenceStudy]) -> list[EvidenceStudy]:
        seen = [s.spec for s in v]
        dup = sorted({s for s in seen if seen.count(s) > 1})
        if dup:
            raise ValueError(f"each spec may be listed once; listed more than once: {', '.join(dup)}")
        return v


@dataclass(frozen=True)
class Entry:
    name: str
    spec_path: Path
    why: str
    description: str


@dataclass
class Provenance:
    """How one report was made (``<out>/<name>/provenance.json``)."""

    name: str
    code_version: str
    commands: list[str]
    started: str
    wall_seconds: float
    run_exit_status: int
    cpus: int
    load_before: list[float]
    load_after: list[float]
    report_version: str | None = None  # the code that made the report, where not the run's (--reports-only)

    def markdown(self) -> list[str]:
        load = ", ".join(f"{x:.1f}" for x in self.load_before)
        return [
            f"Made by `study evidence` on {self.started} UTC: {fmt_minutes(self.wall_seconds)} of wall time for the "
            f"run and this report, on {self.cpus} CPU core(s) (load average {load} at the start). Commands:",
            "",
            "```",
            *self.commands,
            "```",
        ] + ([] if self.report_version in (None, self.code_version) else [
            "",
            f"This report was remade from the study's records, without rerunning it, by `study evidence "
            f"--reports-only` with {self.report_version}.",
        ])


def fmt_minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def load_manifest(path: Path) -> tuple[Manifest, list[Entry]]:
    """The manifest and its studies, every spec read and checked before any work starts."""
    if not path.is_file():
        raise LocationError(f"evidence manifest {str(path)!r}: no such file")
    data, _ = read_source(path)
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise SpecError(f"evidence manifest {path}: {describe(exc)}") from None
    entries: list[Entry] = []
    for item in manifest.studies:
        spec_path = path.parent / item.spec
        if not spec_path.is_file():
            raise LocationError(f"evidence manifest {path}: studies.spec {item.spec!r}: no such file in {path.parent}")
        try:
            spec = load_spec(spec_path)
        except SpecError as exc:
            raise SpecError(f"evidence manifest {path}: studies.spec {item.spec!r}: {exc}") from None
        entries.append(Entry(spec.name, spec_path, item.why, spec.description or ""))
    names = [e.name for e in entries]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SpecError(f"evidence manifest {path}: two specs name the same study: {', '.join(dup)}")
    return manifest, entries


def _study(*args: str) -> list[str]:
    return [sys.executable, "-m", "study.cli", *args]


def _shown(args: list[str]) -> str:
    return "study " + " ".join(shlex.quote(a) for a in args)


def run_one(entry: Entry, studies_dir: Path, out_root: Path, say: Callable[[str], None]) -> Provenance:
    """Deletes any earlier study of the entry's name in ``studies_dir``, runs its spec and reports it."""
    from study.report.build import build_report

    started = dt.datetime.now(dt.timezone.utc)
    load_before = list(os.getloadavg())
    t0 = time.monotonic()
    if (studies_dir / entry.name).exists():
        subprocess.run(_study("delete", entry.name, "--yes", "--dir", str(studies_dir)), check=True,
                       stdout=subprocess.DEVNULL)
    run_args = ["run", str(entry.spec_path), "--dir", str(studies_dir)]
    say(f"{entry.name}: {_shown(run_args)}")
    rc = subprocess.run(_study(*run_args)).returncode
    # The run (another process) made the study's results DB anew: an engine this process kept for
    # an earlier file of the same path would read the deleted one.
    results.forget_engine(resolve(entry.name, str(studies_dir)).results_db)
    report_args = ["report", entry.name, "--dir", str(studies_dir), "--out", str(out_root / entry.name), "--no-mlflow"]
    prov = Provenance(
        name=entry.name, code_version=code_version(), commands=[_shown(run_args), _shown(report_args)],
        started=f"{started:%Y-%m-%d %H:%M}", wall_seconds=0.0, run_exit_status=rc, cpus=os.cpu_count() or 1,
        load_before=load_before, load_after=[],
    )
    # The report is written even for a study that failed or was stopped: failures are results.
    rep = build_report(entry.name, str(studies_dir), None, out_root / entry.name)
    prov.wall_seconds = time.monotonic() - t0
    prov.load_after = list(os.getloadavg())
    # Rebuilt with its provenance (the wall time is known only now; the second build is seconds).
    rep = build_report(entry.name, str(studies_dir), None, out_root / entry.name, provenance=prov.markdown())
    (rep.out_dir / PROVENANCE_FILE).write_text(json.dumps(asdict(prov), indent=2) + "\n")
    say(f"{entry.name}: {fmt_minutes(prov.wall_seconds)}, report {rep.out_dir / 'report.md'}")
    return prov


def remake_report(entry: Entry, studies_dir: Path, out_root: Path, say: Callable[[str], None]) -> Provenance | None:
    """The report of a study `study evidence` made earlier, built again from its records with this
    code (after a change to the reports): its provenance (the run's code version, commands, wall
    time) is kept, and the report's header names both the code the study ran on and this code.
    None where the study or its provenance is not there (it was never made here)."""
    from study.report.build import build_report

    path = out_root / entry.name / PROVENANCE_FILE
    if not path.is_file() or not (studies_dir / entry.name).is_dir():
        say(f"{entry.name}: not made yet (no study in {studies_dir} or no {path}): skipped")
        return None
    prov = Provenance(**json.loads(path.read_text()))
    prov.report_version = code_version()
    rep = build_report(entry.name, str(studies_dir), None, out_root / entry.name, provenance=prov.markdown())
    path.write_text(json.dumps(asdict(prov), indent=2) + "\n")
    say(f"{entry.name}: report remade with {code_version()}, {rep.out_dir / 'report.md'}")
    return prov


def _findings(report_dir: Path) -> pd.DataFrame:
    path = report_dir / "findings.csv"
    return pd.read_csv(path, dtype=str).fillna("") if path.is_file() else pd.DataFrame()


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_index(manifest: Manifest, entries: list[Entry], out_root: Path) -> Path:
    """``<out>/README.md``: the manifest's prose, then each report's verdicts as its findings.csv
    gives them, its code version, commands and wall time. A study not yet made is listed as such."""
    md = [f"# {manifest.title}", "", "Written by `study evidence` (`make evidence`) from the reports below; "
          "edit `search_spaces/evidence.yaml`, not this file.", "", manifest.about.strip(), ""]
    made: list[tuple[Entry, Provenance]] = []
    missing: list[Entry] = []
    for e in entries:
        path = out_root / e.name / PROVENANCE_FILE
        if path.is_file():
            made.append((e, Provenance(**json.loads(path.read_text()))))
        else:
            missing.append(e)
    total = sum(p.wall_seconds for _, p in made)
    versions = sorted({p.code_version for _, p in made})
    md += [f"{len(made)} of {len(entries)} studies made, {fmt_minutes(total)} of wall time in all (budget: "
           f"{manifest.budget_minutes} min on 2 cores); code version{'s' if len(versions) > 1 else ''}: "
           f"{', '.join(versions) or 'none'}.", ""]
    if missing:
        md += ["Not made yet with the current code (run `study evidence --only NAME`): "
               + ", ".join(f"`{e.name}`" for e in missing) + ".", ""]
    md += ["## Verdicts", "",
           "Computed by `study report` from the per-seed values of the cells each finding compares "
           "(docs/reporting.md, \"Findings\"); copied here from each report's `findings.csv`.", "",
           "| study | table | problem | rows | finding | verdict | why | figures |", "|---|---|---|---|---|---|---|---|"]
    for e, _ in made:
        f = _findings(out_root / e.name)
        for _, r in f.iterrows():
            md.append("| " + " | ".join(_cell(x) for x in (f"[{e.name}]({e.name}/report.md)", r.get("table", ""),
                                                             r.get("task", ""), r.get("rows", ""), r.get("finding", ""),
                                                             f"**{r.get('verdict', '')}**", r.get("why", ""),
                                                             r.get("figures", ""))) + " |")
        if f.empty:
            md.append(f"| [{e.name}]({e.name}/report.md) | | | | no paper finding this study's tables can judge | | | |")
    md += ["", "## The studies", ""]
    for e, p in made:
        state = "" if p.run_exit_status == 0 else f" `study run` ended with exit status {p.run_exit_status}."
        md += [f"### [{e.name}]({e.name}/report.md)", "", _cell(e.description), "", e.why.strip(), "",
               f"Code version {p.code_version}"
               + (f" (report made by {p.report_version})" if p.report_version not in (None, p.code_version) else "")
               + f"; {fmt_minutes(p.wall_seconds)} of wall time from {p.started} UTC on "
               f"{p.cpus} core(s), load average {p.load_before[0]:.1f} at the start.{state}", "",
               "```", *p.commands, "```", ""]
    path = out_root / "README.md"
    path.write_text("\n".join(md).rstrip() + "\n")
    return path


def evidence(manifest_path: Path, out_root: Path, studies_dir: Path, only: list[str] | None,
             say: Callable[[str], None], reports_only: bool = False) -> tuple[Path, list[Provenance]]:
    manifest, entries = load_manifest(manifest_path)
    names = [e.name for e in entries]
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise SpecError(f"--only: {', '.join(unknown)} not in {manifest_path}; its studies: {', '.join(names)}")
    chosen = [e for e in entries if not only or e.name in only]
    out_root.mkdir(parents=True, exist_ok=True)
    studies_dir.mkdir(parents=True, exist_ok=True)
    runs = []
    for e in chosen:
        if reports_only:
            prov = remake_report(e, studies_dir, out_root, say)
            runs += [prov] if prov else []
        else:
            runs.append(run_one(e, studies_dir, out_root, say))
        write_index(manifest, entries, out_root)  # after each study: an interrupted set keeps what it made
    return write_index(manifest, entries, out_root), runs


def plan_lines(manifest_path: Path) -> list[str]:
    """What `study evidence --plan` prints: each study and its expected wall time (`study plan`'s)."""
    from study.plan.sizing import make_plan, this_machine

    manifest, entries = load_manifest(manifest_path)
    machine = this_machine()
    lines, total = [], 0.0
    for e in entries:
        seconds = make_plan(load_spec(e.spec_path), machine).wall_seconds
        total += seconds
        lines.append(f"{e.name}: {e.spec_path} (~{fmt_minutes(seconds)})")
    lines.append(f"in all ~{fmt_minutes(total)} by `study plan`'s estimate; budget {manifest.budget_minutes} min")
    return lines


def command(args: Any, out: Any, err: Any) -> int:
    manifest_path = Path(args.manifest)
    if args.plan:
        for line in plan_lines(manifest_path):
            out.print(line, highlight=False, soft_wrap=True)
        return 0
    say: Callable[[str], None] = lambda s: out.print(f"evidence: {s}", highlight=False, soft_wrap=True)  # noqa: E731
    reports_only = bool(getattr(args, "reports_only", False))
    index, runs = evidence(manifest_path, Path(args.out), Path(args.dir or DEFAULT_STUDIES), args.only, say,
                           reports_only=reports_only)
    if reports_only:
        say(f"{len(runs)} reports remade; index {index}")
        return 0
    say(f"{len(runs)} studies made, {fmt_minutes(sum(p.wall_seconds for p in runs))}; index {index}")
    return 0 if all(p.run_exit_status == 0 for p in runs) else 1
