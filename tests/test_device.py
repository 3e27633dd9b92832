"""Trials on a device other than the CPU, checked without a GPU.

- The trial's device follows what Ray assigned (study/plan/devices.py, a pure function).
- Every optimizer, task and the update loop run on the ``meta`` device (shapes and placement, no
  values), standing in for CUDA: no tensor they touch lives on the CPU.
- Between two reports the loop makes no call that waits on the device (``.item()``, ``bool()``,
  ``.tolist()``, ``.cpu()``, blocking copies), counted by a TorchFunctionMode around the real
  train(); with CUDA present, torch.cuda.set_sync_debug_mode("error") checks the same on a GPU.
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from study.plan.devices import DeviceError, trial_device
from trainables.config import parse_config
from trainables.optim import OPTIMIZERS, make_optimizer, polyak_init
from trainables.tasks import TASKS

training = importlib.import_module("trainables.train")  # the module (trainables.train is also the function)

META = torch.device("meta")
# Tensor methods that make the host wait for the device (or copy to the host).
SYNCING = {"item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy", "nonzero"}


class DeviceAudit(TorchFunctionMode):
    """Records every torch call whose tensors (arguments or results) live on the CPU, and every
    call that synchronises with the host."""

    def __init__(self) -> None:
        super().__init__()
        self.on_cpu: list[str] = []
        self.syncs: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        if name in SYNCING:
            self.syncs.append(name)
        if name in ("to", "copy_") and not kwargs.get("non_blocking", False):
            dest = [a for a in (*args[1:], kwargs.get("device")) if isinstance(a, (str, torch.device))]
            src = args[1] if name == "copy_" and len(args) > 1 else None
            if any(torch.device(d).type == "cpu" for d in dest) or (
                isinstance(src, torch.Tensor) and src.device != args[0].device
            ):
                self.syncs.append(f"{name} across devices")
        out = func(*args, **kwargs)
        tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors):
            self.on_cpu.append(name)
        return out


# --- the trial's device ---------------------------------------------------------------


@pytest.mark.parametrize("requested, ids, cuda, visible, expected", [
    ("auto", [], True, None, "cpu"),  # gpus: 0 on a GPU node: Ray counted no GPU, so none is used
    ("auto", [], False, None, "cpu"),
    ("cpu", ["0"], True, "0", "cpu"),  # the spec can still force the CPU
    ("auto", ["2"], True, "2", "cuda:0"),  # Ray narrowed CUDA_VISIBLE_DEVICES to the assigned GPU
    ("cuda", [2], True, "2", "cuda:0"),
    ("auto", ["1"], True, "0,1", "cuda:1"),
    ("auto", ["3"], True, None, "cuda:3"),  # RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES: physical id
    ("auto", ["1", "1"], True, "1", "cuda:0"),  # fractional trials sharing one GPU report it once
])
def test_trial_device_follows_the_gpus_ray_assigned(requested, ids, cuda, visible, expected):
    assert trial_device(requested, ids, cuda, visible) == expected


@pytest.mark.parametrize("requested, ids, cuda, words", [
    ("auto", ["0", "1"], True, ["2 GPUs", "multi-GPU", "gpus <= 1"]),
    ("cpu", ["0", "1"], True, ["2 GPUs"]),
    ("cuda", [], True, ["device='cuda'", "resources.gpus"]),
    ("auto", ["0"], False, ["GPU 0", "CUDA is not available"]),
    ("tpu", [], False, ["device='tpu'"]),
])
def test_trial_device_refuses_what_it_cannot_honour_with_a_clear_error(requested, ids, cuda, words):
    with pytest.raises(DeviceError) as err:
        trial_device(requested, ids, cuda, ",".join(map(str, ids)) or None)
    for w in words:
        assert w in str(err.value)


def test_the_trials_checkpoint_loader_lands_every_tensor_on_the_cpu_and_falls_back_to_the_newest_left(tmp_path):
    # study/run/trial.py's own loader, on checkpoints written as run_trial writes them (one
    # directory per checkpoint, as Tune keeps them): a checkpoint taken on any device loads onto
    # the CPU (train() moves it to the trial's device), and one that Tune's saved state names but
    # that is gone gives way to the newest checkpoint left, then to a start from scratch.
    from ray import tune

    from study.run.trial import CHECKPOINT_FILE, _load_checkpoint
    from trainables import train

    cfg = {"task": "addition", "seq_length": 20, "batch_size": 10, "eval_cases": 50, "updates": 40,
           "report_every": 10, "lr": [1e-3, 3e-3], "seed": [0, 1], "dtype": "float64"}
    dirs = []

    def reporter(report):
        d = tmp_path / "trial" / f"checkpoint_{len(dirs):06d}"
        d.mkdir(parents=True)
        torch.save(report.checkpoint(), d / CHECKPOINT_FILE)
        dirs.append(d)

    train(cfg, reporter)
    checkpoints = [tune.Checkpoint.from_directory(str(d)) for d in dirs]
    state = _load_checkpoint(checkpoints[1])
    assert state["step"] == 20
    tensors = [t for t in tree_flatten(state)[0] if isinstance(t, torch.Tensor)]
    assert tensors and {t.device.type for t in tensors} == {"cpu"}

    import shutil

    shutil.rmtree(dirs[3])  # the newest, named by Tune's saved state, is gone
    assert _load_checkpoint(checkpoints[3])["step"] == 30
    for d in dirs[:3]:
        shutil.rmtree(d)
    assert _load_checkpoint(checkpoints[3]) is None


# --- optimizers, tasks and the loop on a non-CPU device ------------------------------------


def _meta_params(k: int) -> list[torch.Tensor]:
    return [torch.empty(k, 3, 4, device=META), torch.empty(k, 1, 4, device=META)]


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("k", [1, 3])
def test_every_optimizer_runs_on_a_non_cpu_device_without_the_host(name, k):
    params = _meta_params(k)
    opt = make_optimizer(name, params, torch.tensor([0.1] * k, dtype=torch.float64))
    assert opt.lr.device == META and opt.mu.device == META
    mu = torch.full((k,), 0.9, dtype=torch.float32, device=META)
    with DeviceAudit() as audit:
        opt.mu = mu
        point = opt.gradient_point()
        opt.step([torch.empty_like(p) for p in params])
        point = opt.gradient_point(point)
        opt.reset_members(torch.zeros(k, dtype=torch.bool, device=META))
        opt.step([torch.empty_like(p) for p in params])
    assert audit.on_cpu == [] and audit.syncs == []
    assert all(t.device == META for ts in opt.state.values() for t in ts)
    assert all(p.device == META for p in point)
    # state_dict / load_state_dict keep the optimizer's tensors on its own device
    state = opt.state_dict()
    state["lr"] = torch.full((k,), 0.2, dtype=torch.float64)  # as from a CPU checkpoint
    opt.load_state_dict(state)
    assert opt.lr.device == META and opt.mu.device == META


def _config(task: str, k: int, **extra) -> dict:
    cfg = {"task": task, "seed": list(range(k)), "lr": [1e-3] * k, "batch_size": 4, "eval_cases": 8, **extra}
    if task in ("curves", "mnist", "faces"):
        cfg.update(train_cases=16, dataset="noise" if task != "curves" else "replica")
    else:
        cfg.update(seq_length=30 if task != "mem5" else 40)
    return cfg


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("k", [1, 3])
def test_every_task_computes_loss_gradients_and_error_on_a_non_cpu_device(task, k):
    cfg = parse_config(_config(task, k))
    workload = TASKS[task].build(cfg, META, torch.float32)
    params = workload.init_params()
    assert all(p.device == META for p in params)
    with DeviceAudit() as audit:
        loss, grads = workload.loss_and_grads(params, step=3)
        error = workload.error(params)
    assert audit.on_cpu == [] and audit.syncs == []
    assert loss.shape == (k,) and loss.device == META and error.shape == (k,) and error.device == META
    assert [g.shape for g in grads] == [p.shape for p in params] and all(g.device == META for g in grads)


@pytest.mark.parametrize("task, optimizer", [("curves", "nag"), ("addition", "adam"), ("mem5", "rmsprop_nesterov"),
                                             ("multiplication", "cm"), ("mem20", "adagrad")])
@pytest.mark.parametrize("k", [1, 3])
def test_update_loop_with_its_schedules_runs_on_a_non_cpu_device_without_the_host(task, optimizer, k):
    cfg = parse_config(_config(task, k, optimizer=optimizer, polyak_decay=0.9))
    workload = TASKS[task].build(cfg, META, torch.float32)
    params = workload.init_params()
    opt = make_optimizer(optimizer, params, torch.tensor(cfg.member_values("lr"), dtype=torch.float64))
    averages = polyak_init(params)
    schedules = training.member_schedules(cfg)
    mu_table = torch.tensor([[s(t) for s in schedules] for t in range(5)], device=META)
    finite = torch.ones(k, dtype=torch.bool, device=META)
    first = torch.zeros(k, dtype=torch.int64, device=META)
    sums = [torch.zeros(k, dtype=torch.float64, device=META) for _ in range(2)]
    with DeviceAudit() as audit:
        points = training.run_updates(workload, opt, params, averages, 0.9, mu_table, 0, None, finite, first, *sums)
        training.run_updates(workload, opt, params, averages, 0.9, mu_table, 5, points, finite, first, *sums)
    assert audit.on_cpu == [], f"tensors on the CPU in: {sorted(set(audit.on_cpu))}"
    assert audit.syncs == []


# --- no host synchronisation between reports, in the real train() ----------------------------


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("task, optimizer, k", [
    ("curves", "nag", 1), ("curves", "nag", 2), ("addition", "adam", 3), ("mem5", "cm", 1),
    ("multiplication", "rmsprop", 2), ("xor", "rmsprop_nesterov", 2), ("mem20", "sgd", 2),
])
def test_no_call_waits_on_the_device_between_two_reports(monkeypatch, device, task, optimizer, k):
    audits = []
    real = training.run_updates

    def audited(*args, **kwargs):
        with DeviceAudit() as audit:
            if device == "cuda":
                torch.cuda.set_sync_debug_mode("error")
            try:
                out = real(*args, **kwargs)
            finally:
                if device == "cuda":
                    torch.cuda.set_sync_debug_mode("default")
        audits.append(audit)
        return out

    monkeypatch.setattr(training, "run_updates", audited)
    # lr 30 for the last member of a population: it diverges, which the loop must note on the
    # device and leave to the report.
    lrs = [1e-3] * k if k == 1 else [1e-3] * (k - 1) + [30.0]
    # Eager updates: capturing a CUDA graph synchronizes once per minibatch shape by design (the
    # graph path's own no-wait check is in tests/test_cuda_graphs.py).
    cfg = _config(task, k, optimizer=optimizer, lr=lrs, updates=12, report_every=4, polyak_decay=0.9, device=device,
                  cuda_graphs=False)
    steps = []
    training.train(cfg, lambda report: steps.append(report.step))
    # One stretch of updates per report: 4, 8, 12, and for an autoencoder also the final phase's
    # start (a report there, for Table 2) where it falls off that grid.
    assert {4, 8, 12} <= set(steps) and len(audits) == len(steps)
    assert all(a.syncs == [] for a in audits)
