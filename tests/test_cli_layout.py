"""The command line's shape (issue #20): `study --help` starts without the heavy libraries, each
outside library is used from its one owner module, the command line's modules stay small, and the
named reads of study/record/queries.py answer from a real SQLite results database."""

from __future__ import annotations

import ast
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("ray", "torch", "mlflow", "optuna")


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["plan", "--help"], ["no-such-command"]])
def test_help_and_a_mistyped_command_import_neither_ray_torch_mlflow_nor_optuna(argv):
    code = (
        "import json, sys\n"
        "from study.cli import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit as exc:\n    code = exc.code\n"
        f"print(json.dumps([code, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    code, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert code == (2 if argv == ["no-such-command"] else 0), done.stderr
    assert loaded == [], f"`study {' '.join(argv)}` imported {loaded}"


def _imports(path: Path) -> set[str]:
    """The top-level packages a module imports (absolute imports, anywhere in the file)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


# Each outside library and the only place in study/ that may import it (docs/architecture.md): a
# folder, or a module's name, which its split modules share (study/run/optuna_study_analysis.py).
OWNERS = {
    "sqlalchemy": "study/record/", "sqlite3": "study/record/", "alembic": "study/record/",
    "mlflow": "study/record/tracking",
    "optuna": "study/run/optuna_study",
}


def test_each_outside_library_is_imported_only_by_its_owner():
    strays = []
    for path in sorted((REPO / "study").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        for lib in _imports(path) & OWNERS.keys():
            if not rel.startswith(OWNERS[lib]):
                strays.append(f"{rel} imports {lib} (its owner is {OWNERS[lib]})")
    assert strays == []


def test_no_module_of_the_command_line_is_over_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (REPO / "study" / "cli").glob("*.py")}
    assert {n: s for n, s in sizes.items() if s > 400} == {}, sizes


def test_named_reads_answer_from_a_real_results_database(tmp_path):
    from study.record import queries, results

    url = results.sqlite_url(tmp_path / "results.db")
    study_id = results.upsert_study(
        url, name="named", task="addition", metric="error", mode="min", num_samples=5, repeats=1,
        state="running", spec_yaml="name: named\n", tune_path="tune", mlflow_uri="sqlite:///m.db",
    )
    now = dt.datetime(2026, 1, 1)
    for i, state in enumerate(["completed", "diverged", "failed", "pruned", "running"]):
        results.upsert_trial(url, study_id, f"t{i}", state=state, optuna_trial_number=i, params={"lr": 0.1 * (i + 1)},
                             metric_value=float(i) + 0.5, best_metric_value=float(i), started_at=now)
    results.forget_engine(url)
    target = tmp_path / "results.db"

    row = queries.study_row(target, "named")
    assert row is not None
    # Four of the five configurations ended (completed, diverged, failed, pruned); running did not.
    assert (row["name"], row["state"], row["mode"], int(row["num_samples"]), int(row["finished"])) == (
        "named", "running", "min", 5, 4)
    assert row["spec_yaml"] == "name: named\n" and row["mlflow_uri"] == "sqlite:///m.db"
    assert queries.study_row(target, "other") is None

    trials = queries.trials(target, "named")
    assert list(trials["trial_id"]) == ["t0", "t1", "t2", "t3", "t4"]
    assert [p["lr"] for p in trials["params"]] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])

    summary = queries.studies(target)
    assert list(summary.columns) == queries.STUDIES_COLUMNS
    # best: the final result of the completed configuration, not any configuration's lowest seen.
    assert summary.loc[0, ["name", "finished", "running", "best"]].tolist() == ["named", 4, 1, 0.5]

    found = queries.study_with_trials(url, "named")
    assert found is not None
    info, trial_rows, point_rows = found
    assert info["task"] == "addition" and len(trial_rows) == 5 and point_rows == []
    assert queries.study_with_trials(url, "other") is None
    results.forget_engine(url)
