"""One error type per kind of failure (study/errors.py), one name per concept, one style of spec
file name: what issue #20 asks of the spec package and its neighbours, on real parts (real files,
real sockets that refuse, the shipped specs)."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from study.errors import LocationError, ServiceError, SpecError, StudyError
from study.plan import preflight
from study.spec.expand import check_configs
from study.spec.model import load_spec

REPO = Path(__file__).resolve().parents[1]
SPEC = {"name": "kinds", "task": "addition", "config": {"updates": 20, "report_every": 10, "seq_length": 12},
        "search": {"lr": {"type": "grid", "values": [0.01]}}, "sampler": "grid"}


def _closed_port() -> int:
    """A local port nothing listens on: bound, then released (connections to it are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- each kind of failure has its type, and its message is the one the command line prints --------


def test_a_place_that_cannot_be_used_is_a_location_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(LocationError) as info:
        preflight.check_directory(blocker / "studies", preflight.DIR_OPTION)
    assert str(info.value) == (
        f"--dir (MOMENTUM_STUDY_DIR) {str(blocker / 'studies')!r} is not usable: {str(blocker)!r} is a file, "
        "not a directory"
    )
    with pytest.raises(LocationError, match="in-memory SQLite database ends with the process"):
        preflight.check_results_db("sqlite://")
    with pytest.raises(LocationError, match=r"is not allowed: need HOST:PORT \(port 1-65535\)"):
        preflight.check_ray_address("127.0.0.1:http")
    not_sqlite = tmp_path / "results.db"
    not_sqlite.write_bytes(b"not a database at all")
    with pytest.raises(LocationError, match="is not an SQLite database"):
        preflight.check_results_db(f"sqlite:///{not_sqlite}")


def test_a_service_that_does_not_answer_is_a_service_error():
    port = _closed_port()
    with pytest.raises(ServiceError, match=rf"--ray-address \(RAY_ADDRESS\) '127.0.0.1:{port}': nothing answers"):
        preflight.check_ray_address(f"127.0.0.1:{port}")
    with pytest.raises(ServiceError, match="the tracking server does not answer"):
        preflight.check_mlflow(f"http://127.0.0.1:{port}")
    with pytest.raises(ServiceError, match="cannot connect within"):
        preflight.check_results_db(f"postgresql+psycopg2://someone@127.0.0.1:{port}/study")


def test_what_the_spec_asks_of_the_machines_stays_a_spec_error():
    spec = load_spec({**SPEC, "resources": {"cpus": 6, "gpus": 0}})
    with pytest.raises(SpecError, match=r"resources.cpus=6 is not allowed"):
        preflight.check_resources(spec, {"a": {"CPU": 4, "GPU": 0}})


def test_every_kind_is_a_study_error_and_keeps_the_builtin_base_it_had():
    from study.cluster.jobs import ClusterError
    from study.cluster.servers import PortBusy
    from study.locations import LocationError as from_locations
    from study.record.results import ResultsDBError
    from study.run.lock import StudyBusyError
    from study.run.runner import StudyExistsError
    from study.spec.model import SpecError as from_model

    assert from_locations is LocationError and from_model is SpecError
    for kind in (SpecError, LocationError, ServiceError):
        assert issubclass(kind, StudyError)
    assert issubclass(SpecError, ValueError) and issubclass(LocationError, ValueError)
    for service in (ServiceError, ClusterError, ResultsDBError):
        assert issubclass(service, ServiceError) and issubclass(service, RuntimeError)
    for place in (PortBusy, StudyBusyError, StudyExistsError):
        assert issubclass(place, LocationError)
    assert not issubclass(LocationError, SpecError) and not issubclass(ServiceError, SpecError)


# --- one name per concept ------------------------------------------------------------------------


def test_the_optimizers_a_population_may_mix_have_one_name():
    import trainables.optim as optim
    from trainables.config import MIXABLE_OPTIMIZERS
    from trainables.optim.momentum import MIXED_FLAGS

    assert optim.MIXABLE_OPTIMIZERS is MIXABLE_OPTIMIZERS
    assert set(MIXED_FLAGS) == set(MIXABLE_OPTIMIZERS)
    assert not hasattr(optim, "MIXABLE")


def test_a_study_over_several_tasks_may_leave_task_out_and_takes_the_first_searched():
    several = {k: v for k, v in SPEC.items() if k != "task"}
    several["search"] = {**SPEC["search"], "task": {"type": "grid", "values": ["mem5", "addition"]}}
    assert load_spec(several).task == "mem5"
    # given both, both stay as written (every older spec reads the same)
    assert load_spec({**several, "task": "addition"}).task == "addition"
    with pytest.raises(SpecError, match="task is required"):
        load_spec({k: v for k, v in SPEC.items() if k != "task"})
    with pytest.raises(SpecError, match="config.task is not allowed"):
        load_spec({**SPEC, "config": {**SPEC["config"], "task": "mem5"}})


def test_the_checked_config_is_kept_on_the_spec_and_dropped_by_a_changed_copy():
    spec = load_spec(SPEC)
    assert "checked_config" in spec.__dict__  # load_spec checked every config once
    assert spec.checked_config == check_configs(spec)
    assert spec == load_spec(SPEC) and "checked_config" not in spec.model_dump()
    longer = spec.model_copy(update={"config": {**spec.config, "updates": 40}})
    assert "checked_config" not in longer.__dict__
    assert longer.checked_config.updates == 40


# --- the shipped specs ---------------------------------------------------------------------------


def test_every_shipped_spec_file_is_named_in_snake_case():
    names = sorted(p.stem for p in (REPO / "search_spaces").glob("*.yaml"))
    assert names and [n for n in names if not re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*", n)] == []


def test_no_module_of_the_spec_package_is_over_400_lines():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (REPO / "study" / "spec").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}
