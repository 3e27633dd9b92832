"""One training run of a population: config in, N updates, a report every k updates.

Reads top to bottom: config, workload (data + model), optimizer, momentum schedules, loop.
The loop is the same for every task; what differs lives in trainables/tasks/.
"""

from __future__ import annotations

import operator
from dataclasses import replace
from typing import Any, Callable

import torch

from trainables import schedules
from trainables.api import MemberMetrics, MemberStatus, Report, Reporter
from trainables.config import ConfigError, TaskConfig, parse_config
from trainables.graphs import update_graphs
from trainables.optim import make_optimizer, polyak_update
from trainables.tasks import task_for

# 2: per-member tensors hold only the members still in the computation ("members").
CHECKPOINT_VERSION = 2


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed here: no CUDA device is visible (use 'auto' or 'cpu')")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_final_updates(cfg: TaskConfig, member: int | None = None) -> int:
    """Member ``member``'s final low-momentum phase: its ``final_momentum_updates``, or by default
    the task's (``Task.final_phase_updates``: the autoencoders' last 1000 updates at mu <= 0.9,
    shortened to a tenth of a short run; RNN problems: 0). Without ``member``: the length that
    every member shares (ValueError if not)."""
    default = task_for(cfg.task).final_phase_updates(cfg.updates)
    lengths = [default if n is None else n for n in cfg.member_values("final_momentum_updates")]
    if member is not None:
        return lengths[member]
    if len(set(lengths)) > 1:
        raise ValueError(f"final_momentum_updates={cfg.final_momentum_updates!r} differs by member: pass member=k")
    return lengths[0]


def member_schedules(cfg: TaskConfig) -> list[schedules.Schedule]:
    """Each member's momentum schedule, with its own final phase (length and cap)."""
    kind = task_for(cfg.task).resolve(cfg).momentum_schedule
    if kind == "eq5":
        base = [schedules.eq5(m) for m in cfg.member_values("mu_max")]
    elif kind == "rnn":
        base = [schedules.rnn(m) for m in cfg.member_values("mu_0")]
    else:
        base = [schedules.constant(m) for m in cfg.member_values("mu_max")]
    return [
        schedules.with_final_phase(s, cfg.updates, default_final_updates(cfg, k), mu)
        for k, (s, mu) in enumerate(zip(base, cfg.member_values("final_momentum")))
    ]


def validate_for_task(cfg: TaskConfig) -> None:
    task_for(cfg.task).validate(cfg)
    for k in range(cfg.population_size):
        n = default_final_updates(cfg, k)
        if n > cfg.updates:
            which = "" if cfg.population_size == 1 else f" (member {k}: {n})"
            raise ConfigError(
                f"final_momentum_updates={cfg.final_momentum_updates!r} is not allowed{which}: "
                f"more than updates={cfg.updates}"
            )


def check_config(config: dict[str, Any] | TaskConfig) -> TaskConfig:
    """Everything ``train`` refuses before any work (data files excepted: they may live on other
    machines), as one ConfigError naming the key, the value and the rule."""
    cfg = parse_config(config)
    validate_for_task(cfg)
    return cfg


def train(
    config: dict[str, Any] | TaskConfig,
    reporter: Reporter | None = None,
    resume_from: dict[str, Any] | None = None,
) -> list[MemberMetrics]:
    """Train the config's population; returns the last metrics of all K members, in order.

    Between two reports the updates run on the device without waiting on the host
    (``run_updates``); everything that needs a value on the host (metrics, divergence, members
    the reporter stops, the checkpoint) happens at the reports. A member that diverges or is
    stopped leaves the batched computation: every per-member tensor (weights, averages, optimizer
    state, lr) and the workload's per-member data then hold only the members still running,
    ``ids`` (their indices in the config's population), so compute follows the survivors, while
    every report lists all K members. The run ends when none is running.
    """
    cfg = check_config(config)
    device = resolve_device(cfg.device)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    K = cfg.population_size

    workload = task_for(cfg.task).build(cfg, device, dtype)
    opt = make_optimizer(
        cfg.optimizer, workload.init_params(), torch.tensor(cfg.member_values("lr"), dtype=torch.float64),
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, rms_decay=cfg.rms_decay, eps=cfg.eps,
    )
    params = opt.params
    mu_of = member_schedules(cfg)
    averages = [p.clone() for p in params] if cfg.polyak_decay is not None else None
    # On CUDA (cuda_graphs), the updates between two reports replay as captured graphs; None: eager.
    graphs = update_graphs(workload, opt, cfg.polyak_decay, device, cfg.cuda_graphs)

    step = 0
    ids = list(range(K))  # the members in the computation: position j of every tensor is member ids[j]
    status: list[MemberStatus] = ["running"] * K
    diverged_at: list[int | None] = [None] * K
    # Kept on the device and read at reports only: the loss since the last report, whether each
    # member's loss has stayed finite, and the update at which it first did not.
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    loss_count = torch.zeros(K, dtype=torch.float64, device=device)
    finite = torch.ones(K, dtype=torch.bool, device=device)
    first_nonfinite = torch.zeros(K, dtype=torch.int64, device=device)
    last: list[MemberMetrics] = []
    points = None

    def keep_only(positions: list[int]) -> None:
        """Keep only the members at ``positions`` in the computation (index_select along dim 0)."""
        nonlocal ids, params, averages, loss_sum, loss_count, finite, first_nonfinite, points
        if positions == list(range(len(ids))):
            return
        ids = [ids[j] for j in positions]
        if graphs is not None:
            graphs.reset()  # every per-member tensor moves: captured again for the survivors
        workload.select(positions)
        opt.select(positions)
        params, points = opt.params, None
        idx = torch.tensor(positions, dtype=torch.long).to(device)
        if averages is not None:
            averages = [a.index_select(0, idx) for a in averages]
        loss_sum, loss_count, finite, first_nonfinite = (
            t.index_select(0, idx) for t in (loss_sum, loss_count, finite, first_nonfinite)
        )

    def end(members: dict[int, int | None], how: MemberStatus) -> None:
        """End ``members`` (member -> the update it diverged at, or None) and drop them from the
        computation. They keep their last reported metrics, with the new status."""
        for k, at in members.items():
            status[k], diverged_at[k] = how, at
            last[k] = replace(last[k], status=how, diverged_at=at)
        keep_only([j for j, k in enumerate(ids) if k not in members])

    def measure() -> dict[int, MemberMetrics]:
        """The figures of the members in the computation, by member."""
        if not ids:
            return {}
        errors = workload.error(params).tolist()
        averaged = None if averages is None else workload.error(averages).tolist()
        counts = loss_count.tolist()
        mean_loss = (loss_sum / loss_count.clamp(min=1)).tolist()
        lrs = opt.lr.tolist()
        return {
            k: MemberMetrics(k, errors[j], mean_loss[j] if counts[j] > 0 else float("nan"),
                             mu_of[k](max(step - 1, 0)), lrs[j], status[k], None,
                             {} if averaged is None else {"averaged_error": averaged[j]})
            for j, k in enumerate(ids)
        }

    def checkpoint() -> dict[str, Any]:
        # Everything on the CPU: a checkpoint resumes on any device (load with map_location).
        # Per-member tensors hold the members in the computation, ``members``; status, diverged_at
        # and last cover all K.
        return {
            "version": CHECKPOINT_VERSION,
            "config": cfg.model_dump(),
            "step": step,
            "members": list(ids),
            "params": _to_cpu(params),
            "optimizer": _to_cpu(opt.state_dict()),
            "averages": None if averages is None else _to_cpu(averages),
            "status": list(status),
            "diverged_at": list(diverged_at),
            "lr": _to_cpu(opt.lr),
            "loss_sum": _to_cpu(loss_sum),
            "loss_count": _to_cpu(loss_count),
            "last": [m.__dict__ for m in last],
        }

    if resume_from is not None:
        if _identity(resume_from.get("config")) != _identity(cfg.model_dump()):
            raise ConfigError("resume_from is not allowed: the checkpoint was taken with a different config")
        # The full population, compacted to the members the checkpoint holds, then its state. A
        # version 1 checkpoint holds every member (diverged ones zeroed): those leave after loading.
        keep_only(list(resume_from.get("members", range(K))))
        step = resume_from["step"]
        for p, saved in zip(params, resume_from["params"]):
            p.copy_(saved)
        opt.load_state_dict(resume_from["optimizer"])
        if averages is not None:
            for a, saved in zip(averages, resume_from["averages"]):
                a.copy_(saved)
        status, diverged_at = list(resume_from["status"]), list(resume_from["diverged_at"])
        opt.lr = resume_from["lr"].to(device, torch.float64, copy=True)
        loss_sum.copy_(resume_from["loss_sum"])
        loss_count.copy_(resume_from["loss_count"])
        last = [MemberMetrics(**m) for m in resume_from["last"]]
        keep_only([j for j, k in enumerate(ids) if status[k] != "diverged"])
    else:
        last = list(measure().values())  # the "last good metrics" of a member that diverges before its first report

    # Table 2 (the autoencoders, sec. 3) compares the error where the final low-momentum phase
    # begins with the final one: where the task asks, a run also reports at each member's start of
    # that phase, besides every report_every updates.
    phase_starts = ({cfg.updates - default_final_updates(cfg, k) for k in range(K)} - {0, cfg.updates}
                    if task_for(cfg.task).reports_final_phase_start else set())
    while step < cfg.updates and ids:
        n = min(cfg.report_every - step % cfg.report_every, cfg.updates - step,
                *(s - step for s in phase_starts if s > step))
        # The schedule of the next n updates in one (n, K) table, built on the host and copied
        # once: the loop then takes a row (a view) per update instead of a host-to-device copy.
        mu_table = torch.tensor([[mu_of[k](t) for k in ids] for t in range(step, step + n)],
                                dtype=dtype, device=device)
        points = run_updates(workload, opt, params, averages, cfg.polyak_decay, mu_table, step, points,
                             finite, first_nonfinite, loss_sum, loss_count, graphs=graphs)
        step += n

        # The report: the one place the host reads the device.
        now_finite, first_bad = finite.tolist(), first_nonfinite.tolist()
        end({k: first_bad[j] for j, k in enumerate(ids) if not now_finite[j]}, "diverged")
        metrics = measure()
        # A finite loss but non-finite weights by the time of the report: diverged at the report.
        end({k: step for k, m in metrics.items() if not all(map(_finite, (m.error, *m.extra.values())))},
            "diverged")
        done = step == cfg.updates or not ids
        for k in ids:
            status[k] = "completed" if done else "running"
            last[k] = replace(metrics[k], status=status[k])
        loss_sum.zero_()
        loss_count.zero_()
        if reporter is not None:
            # The state is copied only if the reporter asks for it, and only while it runs.
            take = _WhileReporting(checkpoint)
            stop = _stop_requests(reporter(Report(step=step, members=tuple(last), final=done, checkpoint=take)), K)
            take.take = None
            if not done:  # members that have ended (or a run that has) stay as they are
                end({k: None for k in stop if status[k] == "running"}, "pruned")
    return last


def run_updates(
    workload: Any,
    opt: Any,
    params: list[torch.Tensor],
    averages: list[torch.Tensor] | None,
    polyak_decay: float | None,
    mu_table: torch.Tensor,
    first_step: int,
    points: list[torch.Tensor] | None,
    finite: torch.Tensor,
    first_nonfinite: torch.Tensor,
    loss_sum: torch.Tensor,
    loss_count: torch.Tensor,
    graphs: Any = None,
) -> list[torch.Tensor]:
    """The updates between two reports, ``len(mu_table)`` of them, without a host round trip.

    A member whose loss turns NaN or inf is only noted (``finite``, ``first_nonfinite``, on the
    device); its slice goes on computing NaN, which no other member's slice reads (every batched
    op is per member), until the next report drops it from the computation. Returns the last gradient point, whose
    tensors the next call reuses. With ``graphs`` (trainables/graphs.py, on CUDA) the same updates
    replay as captured graphs.
    """
    if graphs is not None:
        return graphs.run(params, averages, mu_table, first_step, points, finite, first_nonfinite, loss_sum, loss_count)
    for i in range(mu_table.shape[0]):
        opt.mu = mu_table[i]
        points = opt.gradient_point(points)  # into the last update's point: no copy of every weight allocated
        loss, grads = workload.loss_and_grads(points, first_step + i)
        # Checking the loss alone is enough: a non-finite gradient makes the weights non-finite,
        # which the next update's loss (or the report's error) shows.
        ok = torch.isfinite(loss)
        first_nonfinite.masked_fill_(finite & ~ok, first_step + i + 1)
        finite.logical_and_(ok)
        opt.step(grads)
        if averages is not None:
            polyak_update(averages, params, polyak_decay)
        loss_sum.add_(torch.where(finite, loss.double(), 0.0))
        loss_count.add_(finite)
    return points


class _WhileReporting:
    """A report's checkpoint: taken only if the reporter asks for it, and only while it runs
    (afterwards the run has moved on and the state would not be the report's)."""

    def __init__(self, take: Callable[[], dict[str, Any]]) -> None:
        self.take: Callable[[], dict[str, Any]] | None = take

    def __call__(self) -> dict[str, Any]:
        if self.take is None:
            raise RuntimeError("report.checkpoint() was called after the reporter returned: call it inside the reporter")
        return self.take()


def _identity(config: dict[str, Any] | None) -> dict[str, Any] | None:
    """What makes two configs the same run: all but the device it runs on and how (CUDA graphs)."""
    return None if config is None else {k: v for k, v in config.items() if k not in ("device", "cuda_graphs")}


def _to_cpu(x: Any) -> Any:
    """Tensors (in lists and dicts) as fresh CPU copies."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x


def _stop_requests(stop: Any, K: int) -> list[int]:
    """The members a reporter returned to stop: None (none), or an iterable of indices in [0, K)."""
    if stop is None:
        return []
    try:
        items = list(stop) if not isinstance(stop, (str, bytes)) else None
        out = None if items is None or any(isinstance(k, bool) for k in items) else [operator.index(k) for k in items]
    except TypeError:
        out = None
    if out is None or any(not 0 <= k < K for k in out):
        raise ValueError(
            f"reporter returned {stop!r}: not allowed; return None or the members to stop, indices in [0, {K})"
        )
    return out


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
