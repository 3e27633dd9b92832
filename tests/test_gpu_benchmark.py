"""benchmarks/gpu_benchmark.py runs as it is, here in its --device cpu --quick mode, and writes every
figure it promises (not a timed test: the figures' values are not checked, only that they exist
and that the float64 gaps measure what they say)."""

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

OURS = {"member_updates_per_s", "updates_per_s", "plain_updates_per_s", "ratio", "setup_s",
        "measured_updates", "measured_s"}
PROFILE = {"kernels_per_update", "busy_fraction"}


def _finite(*xs):
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def test_quick_cpu_run_writes_every_field(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_benchmark.py"), "--device", "cpu", "--quick",
         "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_benchmark.json").read_text())
    assert set(result) == {"meta", "rates", "plain", "study", "gaps"}
    assert {"date", "torch", "device", "device_name", "time_budget_s", "elapsed_s", "command"} <= set(result["meta"])

    tasks = ["curves", "addition"]  # the quick mode's tasks and Ks
    assert [(r["task"], r["K"]) for r in result["rates"]] == [(t, k) for k in (1, 2) for t in tasks]
    for r in result["rates"]:
        if r["K"] == 1:  # the smallest K of every task runs whatever the time budget, profiled
            assert r["status"] == "ok"
            assert PROFILE <= set(r["profile"]) and _finite(*(r["profile"][f] for f in PROFILE))
        if r["status"] == "ok":
            assert OURS <= set(r) and _finite(*(r[f] for f in OURS))
        else:
            assert r["status"].startswith("skipped: ")
    assert set(result["plain"]) == set(tasks)
    assert all({"status", "updates_per_s", *PROFILE} <= set(p) and p["status"] == "ok" for p in result["plain"].values())

    study = result["study"]
    assert study["configurations"] == 4 and _finite(study["fused"]["wall_s"], study["max_final_error_difference"])
    assert {"wall_s", "measured_configs", "extrapolated"} <= set(study["one_at_a_time"])
    assert {"wall_s", "processes", "configs_each", "measured_configs", "startup_s_max"} <= set(study["processes"])
    assert study["processes"]["processes"] == 2
    assert _finite(*study["ratios"].values()) and set(study["ratios"]) == {"one_at_a_time_over_fused", "processes_over_fused"}

    first = result["gaps"][0]
    assert first["task"] == "addition" and first["status"] == "ok"
    # float64: a member is its solo run to rounding, and on the CPU the "other device" is the CPU
    # run again, the same bit for bit.
    assert first["member_vs_solo"] < 1e-9 and first["cpu_vs_device"] == 0.0
    md = (tmp_path / "gpu_benchmark.md").read_text()
    assert md.startswith("### GPU benchmark, ") and "member vs solo" in md
