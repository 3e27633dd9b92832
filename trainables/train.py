"""One training run of a population: config in, N updates, a report every k updates.

Reads top to bottom: config, workload (data + model), optimizer, momentum schedules, loop.
The loop is the same for every task; what differs lives in trainables/tasks/.
"""

from __future__ import annotations

from typing import Any

import torch

from trainables import schedules
from trainables.api import MemberMetrics, Report, Reporter
from trainables.config import ConfigError, TaskConfig, parse_config
from trainables.optim import make_optimizer, polyak_update
from trainables.tasks import ALLOWED_INITS, DEFAULT_SCHEDULE, TASKS, family

CHECKPOINT_VERSION = 1


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is not allowed here: no CUDA device is visible (use 'auto' or 'cpu')")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def default_final_updates(cfg: TaskConfig) -> int:
    """Autoencoders: the paper's last 1000 updates at mu <= 0.9, shortened to a tenth of a short run."""
    if cfg.final_momentum_updates is not None:
        return cfg.final_momentum_updates
    return min(1000, cfg.updates // 10) if family(cfg.task) == "autoencoder" else 0


def member_schedules(cfg: TaskConfig) -> list[schedules.Schedule]:
    kind = cfg.momentum_schedule or DEFAULT_SCHEDULE[family(cfg.task)]
    if kind == "eq5":
        base = [schedules.eq5(m) for m in cfg.member_values("mu_max")]
    elif kind == "rnn":
        base = [schedules.rnn(m) for m in cfg.member_values("mu_0")]
    else:
        base = [schedules.constant(m) for m in cfg.member_values("mu_max")]
    final = default_final_updates(cfg)
    if final == 0:
        return base
    return [schedules.with_final_phase(s, cfg.updates, final, cfg.final_momentum) for s in base]


def validate_for_task(cfg: TaskConfig) -> None:
    fam = family(cfg.task)
    if cfg.init is not None and cfg.init not in ALLOWED_INITS[fam]:
        raise ConfigError(f"init={cfg.init!r} is not allowed for task {cfg.task!r}: allowed {ALLOWED_INITS[fam]}")
    if fam == "rnn" and cfg.dataset != "replica":
        raise ConfigError(f"dataset={cfg.dataset!r} is not allowed for task {cfg.task!r}: RNN problems are generated")
    if fam == "autoencoder" and cfg.dataset == "replica" and cfg.task != "curves":
        from trainables.data.autoencoder_files import KNOWN_FILES, TASK_FILES

        name = TASK_FILES[cfg.task]
        raise ConfigError(
            f"dataset='replica' is not allowed for task {cfg.task!r}: only curves has a procedural replica; "
            f"use dataset='original' with {name} in data_dir (from {KNOWN_FILES[name].url})"
        )
    if default_final_updates(cfg) > cfg.updates:
        raise ConfigError(
            f"final_momentum_updates={cfg.final_momentum_updates!r} is not allowed: more than updates={cfg.updates}"
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
    """Train the config's population; returns each member's final metrics."""
    cfg = check_config(config)
    device = resolve_device(cfg.device)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    K = cfg.population_size

    workload = TASKS[cfg.task].build(cfg, device, dtype)
    params = workload.init_params()
    opt = make_optimizer(
        cfg.optimizer, params, torch.tensor(cfg.member_values("lr"), dtype=torch.float64),
        adam_beta1=cfg.adam_beta1, adam_beta2=cfg.adam_beta2, rms_decay=cfg.rms_decay, eps=cfg.eps,
    )
    mu_of = member_schedules(cfg)
    averages = [p.clone() for p in params] if cfg.polyak_decay is not None else None

    step = 0
    status = ["running"] * K
    diverged_at: list[int | None] = [None] * K
    loss_sum = torch.zeros(K, dtype=torch.float64, device=device)
    loss_count = torch.zeros(K, dtype=torch.float64, device=device)
    last: list[MemberMetrics] = []

    def evaluate() -> list[MemberMetrics]:
        errors = workload.error(params).tolist()
        extra = [{} for _ in range(K)]
        if averages is not None:
            for k, e in enumerate(workload.error(averages).tolist()):
                extra[k]["averaged_error"] = e
        mean_loss = (loss_sum / loss_count.clamp(min=1)).tolist()
        mus = [mu_of[k](max(step - 1, 0)) for k in range(K)]
        out = []
        for k in range(K):
            if status[k] == "diverged":
                out.append(last[k])
                continue
            out.append(MemberMetrics(k, errors[k], mean_loss[k] if loss_count[k] > 0 else float("nan"),
                                     mus[k], float(opt.lr[k]), status[k], None, extra[k]))
        return out

    def checkpoint() -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "config": cfg.model_dump(),
            "step": step,
            "params": [p.detach().cpu().clone() for p in params],
            "optimizer": opt.state_dict(),
            "averages": None if averages is None else [a.cpu().clone() for a in averages],
            "status": list(status),
            "diverged_at": list(diverged_at),
            "lr": opt.lr.cpu().clone(),
            "loss_sum": loss_sum.cpu().clone(),
            "loss_count": loss_count.cpu().clone(),
            "last": [m.__dict__ for m in last],
        }

    if resume_from is not None:
        if resume_from.get("config") != cfg.model_dump():
            raise ConfigError("resume_from is not allowed: the checkpoint was taken with a different config")
        step = resume_from["step"]
        for p, saved in zip(params, resume_from["params"]):
            p.copy_(saved)
        opt.load_state_dict(resume_from["optimizer"])
        if averages is not None:
            for a, saved in zip(averages, resume_from["averages"]):
                a.copy_(saved)
        status, diverged_at = list(resume_from["status"]), list(resume_from["diverged_at"])
        opt.lr = resume_from["lr"].clone()
        loss_sum.copy_(resume_from["loss_sum"])
        loss_count.copy_(resume_from["loss_count"])
        last = [MemberMetrics(**m) for m in resume_from["last"]]
    else:
        last = evaluate()  # the "last good metrics" of a member that diverges before its first report

    alive = torch.tensor([s != "diverged" for s in status], device=device)

    def freeze(members: torch.Tensor, at: int) -> None:
        """Mark members diverged at update ``at``, keeping their last good metrics. Their weights
        (and averages) are set to zero with zero lr and momentum: their slice of every batched op
        stays finite, so the other members run on undisturbed."""
        nonlocal alive
        for k in members.nonzero().flatten().tolist():
            status[k], diverged_at[k] = "diverged", at
            m = last[k]
            last[k] = MemberMetrics(k, m.error, m.loss, m.mu, m.lr, "diverged", at, m.extra)
        alive = alive & ~members
        # masked_fill, not a product: NaN * 0 is NaN, and a diverged member's weights often are.
        for p in params:
            p.masked_fill_(_per_member(members, p), 0.0)
        if averages is not None:
            for a in averages:
                a.masked_fill_(_per_member(members, a), 0.0)
        opt.reset_members(members)
        opt.lr = opt.lr * alive.to(opt.lr)
        opt.mu = opt.mu * alive.to(opt.mu)
    points = None
    while step < cfg.updates and bool(alive.any()):
        opt.mu = torch.tensor([mu_of[k](step) for k in range(K)], device=device, dtype=dtype) * alive
        points = opt.gradient_point(points)  # into the last update's point: no copy of every weight allocated
        loss, grads = workload.loss_and_grads(points, step)
        # Checking the loss alone is enough: a non-finite gradient makes the weights non-finite,
        # which the next update's loss (or the report's error) shows.
        newly = alive & ~torch.isfinite(loss)
        if bool(newly.any()):
            grads = [torch.where(_per_member(newly, g), torch.zeros_like(g), g) for g in grads]
            freeze(newly, step + 1)
        opt.step(grads)
        if averages is not None:
            polyak_update(averages, params, cfg.polyak_decay)
        loss_sum += torch.where(alive, loss.double(), torch.zeros_like(loss_sum))
        loss_count += alive.double()
        step += 1
        done = step == cfg.updates or not bool(alive.any())
        if step % cfg.report_every == 0 or done:
            if done:
                status = ["completed" if s == "running" else s for s in status]
            metrics = evaluate()
            late = torch.tensor([status[k] != "diverged" and not all(map(_finite, (m.error, *m.extra.values())))
                                 for k, m in enumerate(metrics)], device=device)
            if bool(late.any()):  # finite loss but non-finite weights by the time of the report
                freeze(late, step)
                metrics = [last[k] if late[k] else m for k, m in enumerate(metrics)]
            last = metrics
            loss_sum.zero_()
            loss_count.zero_()
            if reporter is not None:
                state = checkpoint()  # taken now: the reporter may call report.checkpoint() later
                reporter(Report(step=step, members=tuple(last), final=done, checkpoint=lambda s=state: s))
    return last


def _per_member(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
