"""`study evidence`: every report of a manifest made from scratch by one command, each naming the
code version it ran on, its commands and its wall time, and an index whose verdicts are the
reports' own computed ones (issue 22, item 2)."""

from __future__ import annotations

import json
import os

import pandas as pd
import yaml
from conftest import QUICK_ADDITION, study_in_process

from study.code_version import code_version
from study.locations import resolve
from study.record import queries


def _spec(name: str) -> dict:
    cfg = {k: v for k, v in QUICK_ADDITION.items() if k not in ("task", "mu_0")}
    return {
        "name": name,
        "description": f"{name}: NAG/CM x mu_0, a few updates",
        "task": "addition",
        "config": cfg,
        "search": {"optimizer": {"type": "grid", "values": ["nag", "cm"]},
                   "mu_0": {"type": "grid", "values": [0.0, 0.9]}},
        "sampler": "grid",
        "repeats": 2,
        "scheduler": "fifo",
        "max_concurrent_trials": 2,
    }


def _manifest(tmp_path, studies: list[dict], **over) -> str:
    folder = tmp_path / "specs"
    folder.mkdir(exist_ok=True)
    for s in studies:
        (folder / f"{s['name']}.yaml").write_text(yaml.safe_dump(s))
    manifest = {"title": "Evidence", "about": "What these reports are.", "budget_minutes": 5,
                "studies": [{"spec": f"{s['name']}.yaml", "why": f"why {s['name']}"} for s in studies], **over}
    path = folder / "evidence.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def test_evidence_makes_each_report_from_scratch_and_indexes_its_verdicts(ray_session, study_env, tmp_path):
    manifest = _manifest(tmp_path, [_spec("ev_a"), _spec("ev_b")])
    out, runs = tmp_path / "results", tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(RAY_ADDRESS=ray_session, TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1")
    args = ("evidence", "--manifest", manifest, "--out", str(out), "--dir", str(runs), "--only", "ev_a")

    first = study_in_process(*args, env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    report = (out / "ev_a" / "report.md").read_text()
    assert f"the study ran on **{code_version()}**" in report
    prov = json.loads((out / "ev_a" / "provenance.json").read_text())
    assert prov["code_version"] == code_version() and prov["wall_seconds"] > 0 and prov["run_exit_status"] == 0
    assert prov["commands"][0] == f"study run {tmp_path / 'specs' / 'ev_a.yaml'} --dir {runs}"
    assert prov["commands"][0] in report and "Made by `study evidence`" in report

    index = (out / "README.md").read_text()
    findings = pd.read_csv(out / "ev_a" / "findings.csv", dtype=str).fillna("")
    assert len(findings) > 0  # NAG against CM at mu_0 0.9: Table 5's findings apply
    for _, row in findings.iterrows():  # the index copies the computed verdicts, never its own
        assert f"| {row['finding']} | **{row['verdict']}** |" in index
    assert "1 of 2 studies made" in index and "`ev_b`" in index  # not made: listed as such
    assert not (out / "ev_b").exists()

    url = resolve("ev_a", str(runs)).results_db
    created = queries.study_with_trials(url, "ev_a")[0]["created_at"]
    again = study_in_process(*args, env=env)
    assert again.returncode == 0, again.stdout + again.stderr
    row, trials, _ = queries.study_with_trials(url, "ev_a")
    assert row["created_at"] > created  # deleted and made again, not resumed or appended to
    assert len(trials) == 4

    # --reports-only: the report remade from the records with this code, the study not rerun; the
    # run's provenance kept (here made to look older) and the remaking said.
    prov_path = out / "ev_a" / "provenance.json"
    prov = json.loads(prov_path.read_text())
    prov_path.write_text(json.dumps({**prov, "code_version": "0.1.0+gold"}))
    (out / "ev_a" / "report.md").unlink()
    remade = study_in_process(*args, "--reports-only", env=env)
    assert remade.returncode == 0 and "1 reports remade" in remade.stdout, remade.stdout + remade.stderr
    assert queries.study_with_trials(url, "ev_a")[0]["created_at"] == row["created_at"]
    assert f"by `study evidence --reports-only` with {code_version()}" in (out / "ev_a" / "report.md").read_text()
    kept = json.loads(prov_path.read_text())
    assert kept["report_version"] == code_version() and kept["wall_seconds"] == prov["wall_seconds"]
    assert f"Code version 0.1.0+gold (report made by {code_version()})" in (out / "README.md").read_text()


def test_evidence_refuses_a_bad_manifest_before_any_work(study_env, tmp_path):
    out = tmp_path / "results"
    bad = _manifest(tmp_path, [_spec("ev_c")], budget_minutes=0)
    r = study_in_process("evidence", "--manifest", bad, "--out", str(out))
    assert r.returncode == 2 and "budget_minutes" in r.stderr and "0" in r.stderr
    good = _manifest(tmp_path, [_spec("ev_c")])
    r = study_in_process("evidence", "--manifest", good, "--out", str(out), "--only", "nope")
    assert r.returncode == 2 and "nope" in r.stderr and "ev_c" in r.stderr
    wrong = _spec("ev_d")
    wrong["config"]["lr"] = -1.0
    r = study_in_process("evidence", "--manifest", _manifest(tmp_path, [wrong]), "--out", str(out))
    assert r.returncode == 2 and "ev_d.yaml" in r.stderr and "lr" in r.stderr
    assert not out.exists()


def test_a_resume_on_other_code_is_named_beside_the_code_the_study_started_on():
    from study.run.runner import resumed_version

    assert resumed_version("0.1.0+gaaa", "0.1.0+gaaa") == "0.1.0+gaaa"
    assert resumed_version("0.1.0+gaaa", "0.1.0+gbbb") == "0.1.0+gaaa; resumed with 0.1.0+gbbb"
    assert resumed_version("0.1.0+gaaa; resumed with 0.1.0+gbbb", "0.1.0+gbbb") == "0.1.0+gaaa; resumed with 0.1.0+gbbb"
    assert resumed_version(None, "0.1.0+gbbb") == "unknown; resumed with 0.1.0+gbbb"


def test_the_code_version_names_the_checkouts_commit():
    import subprocess

    from study.code_version import ROOT, package_version

    version = code_version()
    assert version.startswith(package_version())
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        code_changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no",
                                       "--", "study", "trainables", "search_spaces", "pyproject.toml"],
                                      capture_output=True, text=True, check=True).stdout.strip() != ""
        assert version == f"{package_version()}+g{head}{'-dirty' if code_changed else ''}"
